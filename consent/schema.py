"""The tables of the consent service's database (what its migrations build)."""

from __future__ import annotations

from consent.accounts import CitizenAccount
from consent.citizen_sessions import CitizenSession, PendingOidcSignIn
from identity.replay import SeenToken
from identity.trustlist import Member
from runtime.schema import metadata_of

metadata = metadata_of([Member, SeenToken, CitizenAccount, CitizenSession, PendingOidcSignIn])
