"""EDRs (Endpoint Data References): the consumer's pull data addresses, as Tractus-X clients use them.

An EDR is the data address (endpoint and short-lived token) a provider's
start message carried for one of our pull transfers; the transfer row keeps
it (``transfer_process.data_address``). ``connector.edr_negotiations`` starts
the negotiations that end in one; this module

- lists EDR entries: our STARTED or SUSPENDED pull transfers that hold a data
  address, each with the negotiation of its agreement;
- shows a data address in EDC's form and refreshes its token when asked or
  when due, one refresh at a time per EDR (the provider call itself is
  ``connector.edr_refresh``);
- forgets an EDR (the transfer itself goes on until someone ends it).

The refresh token never leaves the connector: a refresh goes through
``POST /management/v3/edrs/{id}/refresh`` or ``auto_refresh``.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any, Literal

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, Select, select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.jsonld import EDC_RESPONSE_CONTEXT
from catalog.queryspec import FixedFields, QuerySpec, table_of
from connector.dsp.transfer_messages import endpoint_properties
from connector.edr_refresh import refresh_edr
from connector.transfer_models import TransferRow
from connector.transfer_states import Role, State
from connector.transfers import TransferError
from contracts.models import AgreementRow
from identity.errors import TokenRejected
from identity.tokens import read_unverified
from identity.trustlist import get_member
from runtime.service import ServiceCore

RefreshMode = Literal["never", "when-due", "now"]
PULL_FORMAT = "HttpData-PULL"
TX_NS = "https://w3id.org/tractusx/v0.0.1/ns/"
TX_AUTH_NS = "https://w3id.org/tractusx/auth/"
EDR_CONTEXT: dict[str, str] = {**EDC_RESPONSE_CONTEXT, "tx": TX_NS, "tx-auth": TX_AUTH_NS}
ENTRY_TYPE = "EndpointDataReferenceEntry"
MAX_REFRESH_MARGIN_SECONDS = 30.0
# An EDR's transfer in one of these states still has a data address worth showing.
ACTIVE_STATES = (State.STARTED.value, State.SUSPENDED.value)
# Endpoint properties shown under Tractus-X's auth namespace, as its clients read them.
_TX_AUTH_PROPERTIES = ("expiresIn", "refreshEndpoint", "refreshAudience")
_KEPT_INSIDE = frozenset({"refreshToken"})

_T = table_of(TransferRow).c
_A = table_of(AgreementRow).c

ENTRY_FIELDS = FixedFields(
    ENTRY_TYPE,
    {
        "id": _T.id,
        "@id": _T.id,
        "transferProcessId": _T.id,
        "assetId": _T.asset_id,
        "agreementId": _T.agreement_id,
        "contractNegotiationId": _A.negotiation_id,
        "providerId": _T.counter_party_did,
        "createdAt": _T.created_at,
    },
    _T.created_at,
)


class EdrError(Exception):
    """A request about an EDR was refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------- EDR entries


def _entries() -> Select[Any]:
    return (
        select(TransferRow, _A.negotiation_id)
        .outerjoin(table_of(AgreementRow), _A.id == _T.agreement_id)
        .where(
            _T.role == Role.CONSUMER.value,
            _T.transfer_type == PULL_FORMAT,
            _T.data_address.is_not(None),
            _T.state.in_(ACTIVE_STATES),
        )
    )


def query_entries(session: Session, spec: QuerySpec) -> list[dict[str, Any]]:
    statement = (
        _entries()
        .where(*ENTRY_FIELDS.conditions(spec.criteria))
        .order_by(*ENTRY_FIELDS.order(spec))
        .offset(spec.offset)
        .limit(spec.limit)
    )
    return [entry_to_edc(row, negotiation_id) for row, negotiation_id in session.execute(statement).tuples()]


def entry_to_edc(row: TransferRow, negotiation_id: str | None) -> dict[str, Any]:
    """One EDR entry, a complete JSON-LD object (clients read the items of a list one by one)."""
    entry: dict[str, Any] = {
        "@id": row.id,
        "@type": ENTRY_TYPE,
        "providerId": row.counter_party_did,
        "assetId": row.asset_id,
        "agreementId": row.agreement_id,
        "transferProcessId": row.id,
        "createdAt": row.created_at,
    }
    if negotiation_id is not None:
        entry["contractNegotiationId"] = negotiation_id
    entry["@context"] = dict(EDR_CONTEXT)
    return entry


def not_found(transfer_id: str) -> EdrError:
    return EdrError(404, f"Object of type {ENTRY_TYPE} with ID={transfer_id} was not found")


def edr_row(session: Session, transfer_id: str, *, lock: bool = False) -> TransferRow:
    """The transfer behind an EDR entry; 404 when there is no such entry (any more)."""
    row = session.get(TransferRow, transfer_id, with_for_update=lock)
    if (
        row is None
        or row.role != Role.CONSUMER.value
        or row.transfer_type != PULL_FORMAT
        or row.data_address is None
        or row.state not in ACTIVE_STATES
    ):
        raise not_found(transfer_id)
    return row


def remove(session: Session, transfer_id: str) -> None:
    """Forget an EDR: its token is dropped here; the transfer goes on until someone ends it."""
    row = edr_row(session, transfer_id, lock=True)
    row.data_address = None
    row.updated_at = now_millis()
    session.add(row)
    session.commit()


# ---------------------------------------------------------------- data addresses and refresh


def address_to_edc(address: dict[str, Any], provider_did: str) -> dict[str, Any]:
    """A DSP data address in EDC's flat form: ``endpoint``, ``authorization``, ``authType``, ``tx-auth:*``."""
    endpoint_type = address.get("endpointType")
    out: dict[str, Any] = {"@type": "DataAddress", "type": endpoint_type, "endpointType": endpoint_type}
    out["endpoint"] = address.get("endpoint")
    for name, value in endpoint_properties(address).items():
        if name in _KEPT_INSIDE:
            continue
        out[f"tx-auth:{name}" if name in _TX_AUTH_PROPERTIES else name] = value
    out["tx-auth:refreshAudience"] = provider_did
    out["@context"] = dict(EDR_CONTEXT)
    return out


def expires_at(address: dict[str, Any]) -> float | None:
    """When the address's access token expires (its ``exp``), if it says; a hint, not a check."""
    token = endpoint_properties(address).get("authorization")
    if not token:
        return None
    try:
        _, claims = read_unverified(token)
    except TokenRejected:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def due_for_refresh(address: dict[str, Any], now: float | None = None) -> bool:
    """Is the token expired or about to (within a fifth of its lifetime, at most 30 s)?"""
    expiry = expires_at(address)
    if expiry is None:
        return False
    try:
        lifetime = float(endpoint_properties(address).get("expiresIn", MAX_REFRESH_MARGIN_SECONDS))
    except ValueError:
        lifetime = MAX_REFRESH_MARGIN_SECONDS
    margin = min(MAX_REFRESH_MARGIN_SECONDS, max(1.0, lifetime / 5))
    return expiry - (time.time() if now is None else now) <= margin


# One refresh at a time per transfer in this process: a second caller waits and sees the new token.
_refresh_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock_for(transfer_id: str) -> asyncio.Lock:
    lock = _refresh_locks.get(transfer_id)
    if lock is None:
        lock = asyncio.Lock()
        _refresh_locks[transfer_id] = lock
    return lock


def _load(engine: Engine, transfer_id: str) -> tuple[str, str]:
    """(the stored address JSON, the provider's DID)."""
    with Session(engine) as session:
        row = edr_row(session, transfer_id)
        assert row.data_address is not None  # edr_row checked it
        return row.data_address, row.counter_party_did


def _check_member(engine: Engine, did: str) -> None:
    with Session(engine) as session:
        if get_member(session, did) is None:
            raise EdrError(409, f"{did} is no longer a member of this data space: no refresh is asked of it")


async def data_address(core: ServiceCore, transfer_id: str, *, refresh: RefreshMode) -> dict[str, Any]:
    """The EDR's data address in EDC form; ``refresh``: "never", "when-due" (auto_refresh) or "now"."""
    stored, provider = await run_in_threadpool(_load, core.engine, transfer_id)
    address: dict[str, Any] = json.loads(stored)
    if refresh == "never" or (refresh == "when-due" and not due_for_refresh(address)):
        return address_to_edc(address, provider)
    async with _lock_for(transfer_id):
        stored, provider = await run_in_threadpool(_load, core.engine, transfer_id)
        address = json.loads(stored)
        if refresh == "when-due" and not due_for_refresh(address):
            return address_to_edc(address, provider)  # another caller refreshed it while we waited
        properties = endpoint_properties(address)
        if refresh == "when-due" and not (
            properties.get("refreshToken") and properties.get("refreshEndpoint")
        ):
            return address_to_edc(address, provider)  # nothing to refresh with: as the provider gave it
        await run_in_threadpool(_check_member, core.engine, provider)
        try:
            # The provider call and the stored swap: connector.edr_refresh (it calls the refresh
            # endpoint only inside the provider's registered address space).
            renewed = await refresh_edr(core, transfer_id)
        except TransferError as exc:
            # Another replica may have refreshed with the same refresh token first: its token stands.
            current, _ = await run_in_threadpool(_load, core.engine, transfer_id)
            if current != stored:
                return address_to_edc(json.loads(current), provider)
            raise EdrError(exc.status, exc.reason) from None
        return address_to_edc(renewed, provider)
