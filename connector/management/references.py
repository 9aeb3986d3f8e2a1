"""What an agreement still needs: assets and contract definitions it names cannot be deleted.

Lives in the connector (the composition root): the catalog does not know about
agreements, and agreements do not know about the catalog's tables.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import delete_asset
from catalog.contract_definitions import delete_contract_definition
from catalog.errors import ConflictError
from catalog.queryspec import table_of
from contracts.models import AgreementRow, NegotiationRow

_AGREEMENTS = table_of(AgreementRow).c
_NEGOTIATIONS = table_of(NegotiationRow).c


def delete_unreferenced_asset(session: Session, asset_id: str) -> None:
    agreement = session.scalars(
        select(_AGREEMENTS.id).where(_AGREEMENTS.asset_id == asset_id).limit(1)
    ).first()
    if agreement is not None:
        raise ConflictError(
            f"Asset {asset_id} cannot be deleted as it is referenced by contract agreement {agreement}"
        )
    delete_asset(session, asset_id)


def delete_unreferenced_contract_definition(session: Session, definition_id: str) -> None:
    agreement = session.scalars(
        select(_NEGOTIATIONS.agreement_id)
        .where(_NEGOTIATIONS.contract_definition_id == definition_id, _NEGOTIATIONS.agreement_id.is_not(None))
        .limit(1)
    ).first()
    if agreement is not None:
        raise ConflictError(
            f"ContractDefinition {definition_id} cannot be deleted as contract agreement {agreement} was made under it"
        )
    delete_contract_definition(session, definition_id)
