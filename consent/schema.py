"""The tables of the consent service's database (what its migrations build)."""

from __future__ import annotations

from consent.accounts import CitizenAccount
from consent.citizen_sessions import CitizenSession, PendingOidcSignIn
from consent.models import (
    AgreementRevision,
    Citizen,
    ConsentChange,
    ConsentEvent,
    ConsentRecord,
    DataAgreement,
    FeedHead,
    Organisation,
    SubjectIdentifier,
    TransferSummary,
)
from identity.replay import SeenToken
from identity.trustlist import Member
from runtime.ratelimit import SignInAttempt
from runtime.schema import metadata_of

metadata = metadata_of(
    [
        Member,
        SeenToken,
        SignInAttempt,
        Organisation,
        DataAgreement,
        AgreementRevision,
        Citizen,
        SubjectIdentifier,
        ConsentRecord,
        ConsentEvent,
        FeedHead,
        ConsentChange,
        TransferSummary,
        CitizenAccount,
        CitizenSession,
        PendingOidcSignIn,
    ]
)
