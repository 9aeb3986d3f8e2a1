"""The tables of a connector's database (what its migrations build)."""

from __future__ import annotations

from catalog.models import (
    Asset,
    AssetProperty,
    CachedDatasetRow,
    ContractDefinition,
    CrawlStatusRow,
    PolicyDefinition,
)
from connector.auditor.models import AuditFacetRow, AuditIndexRow, AuditorRow
from connector.edr_models import EdrNegotiationRow
from connector.transfer_models import TransferRow
from connector.translog.models import (
    LogAlertRow,
    LogCheckpointRow,
    LogCosignatureRow,
    LogLeafHashRow,
    LogLeafRow,
    WitnessedLogRow,
)
from contracts.models import AgreementRow, CasbinRuleRow, NegotiationRow, PolicyEngineVersionRow
from identity.replay import SeenToken
from identity.trustlist import Member
from runtime.ratelimit import SignInAttempt
from runtime.schema import metadata_of

metadata = metadata_of(
    [
        Member,
        SeenToken,
        SignInAttempt,
        Asset,
        AssetProperty,
        PolicyDefinition,
        ContractDefinition,
        CachedDatasetRow,
        CrawlStatusRow,
        NegotiationRow,
        AgreementRow,
        CasbinRuleRow,
        PolicyEngineVersionRow,
        TransferRow,
        LogLeafRow,
        LogLeafHashRow,
        LogCheckpointRow,
        LogCosignatureRow,
        WitnessedLogRow,
        LogAlertRow,
        EdrNegotiationRow,
        AuditorRow,
        AuditIndexRow,
        AuditFacetRow,
    ]
)
