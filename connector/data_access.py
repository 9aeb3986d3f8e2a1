"""May this data token fetch this transfer's data now? The provider's check at every access.

In order, each refusal naming its reason: the token is one this connector
issued, unexpired, for this transfer, its agreement and its consumer, and
the current one (a refresh retires the previous token); the transfer is
STARTED and not being ended; then usage control: the agreed policy is
decided again with the declared purpose, the time, and the access counted
(atomically: the row is locked while the count is read and raised).

A usage denial also ends the transfer, and the consumer is told over DSP:
when only the agreed number of accesses ran out, the transfer is COMPLETED
(everything agreed has been used); any other denial (the time window
closed, the purpose or the consumer no longer admitted) TERMINATES it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, update
from sqlmodel import Session

from catalog.assets import AssetRecord, get_asset, now_millis
from catalog.queryspec import table_of
from connector import transfer_evidence as evidence
from connector.dataplane import tokens
from connector.dataplane.gated_stream import GateCounters
from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfer_states import Message, Role, State
from connector.transfers import (
    PULL,
    PUSH,
    accesses_under,
    agreement_of,
    end_by_provider,
    flow_of,
    new_data_address,
    pending_of,
)
from connector.usage import Use, decide_use, only_the_count_denies
from runtime.outbox import wait_for_record
from runtime.service import ServiceCore

_TABLE = table_of(TransferRow)
_T = _TABLE.c


class AccessDenied(Exception):
    """``status`` (401: the token; 403: the transfer or the policy), ``reason`` a short code."""

    def __init__(self, status: int, reason: str, message: str, *, ended: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.ended = ended  # the transfer is now being ended: kick the worker


@dataclass(frozen=True)
class Access:
    transfer: TransferRow
    asset: AssetRecord
    access_number: int


def _refuse(
    session: Session,
    consumer: str,
    row: TransferRow | None,
    status: int,
    reason: str,
    message: str,
    *,
    ended: bool = False,
    explanation: str | None = None,
) -> AccessDenied:
    """Log a refused access (its consumer is known: the token is ours) and commit; the error to raise."""
    evidence.refused(
        session,
        counter_party=consumer,
        role="provider",
        reason=message,
        code=f"access.{reason}",
        transfer_id=row.id if row else None,
        agreement_id=row.agreement_id if row else None,
        dataset=row.asset_id if row else None,
        policy_explanation=explanation,
    )
    session.commit()
    return AccessDenied(status, reason, message, ended=ended)


def check_token(core: ServiceCore, token: str, kind: str = tokens.ACCESS) -> tokens.DataToken:
    try:
        return tokens.verify(token, core.key.public_key(), core.settings.did, kind)
    except tokens.DataTokenError as exc:
        raise AccessDenied(401, exc.reason, exc.message) from None


def _bound_row(session: Session, claims: tokens.DataToken, transfer_id: str) -> TransferRow:
    if claims.transfer_id != transfer_id:
        raise _refuse(
            session, claims.consumer, None, 403, "wrong_transfer", "the token was issued for another transfer"
        )
    row = session.get(TransferRow, transfer_id)
    if row is None or row.role != Role.PROVIDER.value:
        raise _refuse(
            session, claims.consumer, None, 403, "wrong_transfer", "the token was issued for another transfer"
        )
    if claims.consumer != row.counter_party_did or claims.agreement_id != row.agreement_id:
        raise _refuse(
            session,
            claims.consumer,
            row,
            403,
            "wrong_party",
            "the token was not issued to this transfer's consumer",
        )
    return row


def _wait_for_start(session: Session, row: TransferRow) -> TransferRow:
    """The consumer may use its token as soon as the start reaches it, before we record its delivery."""

    def start_recorded(current: TransferRow) -> bool:
        if current.state != State.REQUESTED.value:
            return True
        pending = pending_of(current)
        return pending is None or pending.message is not Message.START

    return wait_for_record(session, row, start_recorded)


def authorize(session: Session, core: ServiceCore, transfer_id: str, token: str) -> Access:
    """Check everything for one access and count it; AccessDenied (nothing counted) otherwise."""
    claims = check_token(core, token)
    row = _wait_for_start(session, _bound_row(session, claims, transfer_id))
    session.rollback()  # end the read; the decision below locks the row afresh
    locked = session.get(TransferRow, transfer_id, with_for_update=True, populate_existing=True)
    assert locked is not None
    row = locked
    if claims.jti != row.token_id:
        message = "the token has been replaced by a newer one (refresh) or revoked"
        raise _refuse(session, row.counter_party_did, row, 401, "replaced", message)
    if flow_of(row) != PULL:
        message = "this is a push transfer: the provider sends the data"
        raise _refuse(session, row.counter_party_did, row, 403, "not_pull", message)
    return _admit(session, core, row)


def authorize_push(session: Session, core: ServiceCore, transfer_id: str) -> Access:
    """The same checks (but the token's) before the provider pushes a transfer's data: one access."""
    row = session.get(TransferRow, transfer_id, with_for_update=True, populate_existing=True)
    if row is None or row.role != Role.PROVIDER.value or flow_of(row) != PUSH:
        raise AccessDenied(403, "not_push", "not a push transfer of this provider")
    return _admit(session, core, row)


def _admit(session: Session, core: ServiceCore, row: TransferRow) -> Access:
    """The transfer's state and the agreed policy, for one access of the locked ``row``; counted."""
    party = row.counter_party_did
    if row.state != State.STARTED.value:
        raise _refuse(session, party, row, 403, "state", f"the transfer is {row.state}: no data is served")
    pending = pending_of(row)
    if pending is not None and pending.message is not Message.START:
        message = f"the transfer is being ended ({pending.message.value}): no data is served"
        raise _refuse(session, party, row, 403, "ending", message)
    asset = get_asset(session, row.asset_id)
    if asset is None:
        raise _refuse(session, party, row, 403, "gone", f"dataset {row.asset_id} is no longer published")
    agreement = agreement_of(session, row)
    number = accesses_under(session, row.agreement_id) + 1
    use = Use(agreement, row.counter_party_did, row.purpose, number)
    decision = decide_use(session, core, use)
    row.policy_decision = evidence.decision_json(decision.allowed, decision.explanation)
    if not decision.allowed:
        explanation = f"the agreed policy denies this access: {decision.explanation}"
        if only_the_count_denies(session, core, use):
            ended = end_by_provider(session, row, Message.COMPLETION, "usage", explanation)
        else:
            ended = end_by_provider(session, row, Message.TERMINATION, "usage", explanation)
        raise _refuse(
            session, party, row, 403, "policy", explanation, ended=ended, explanation=decision.explanation
        )
    row.access_count += 1
    row.updated_at = now_millis()
    session.add(row)
    session.commit()
    return Access(row, asset, number)


def uncount(session: Session, transfer_id: str) -> None:
    """The source could not be opened: that access served nothing and does not count."""
    session.execute(
        update(_TABLE)
        .where(_T.id == transfer_id, _T.access_count > 0)
        .values(access_count=_T.access_count - 1)
    )
    session.commit()


@dataclass(frozen=True)
class Served:
    """What one access (or one push) served: for the transfer log (``transfer_evidence``)."""

    payload_sha256: str
    records: int
    gate: GateCounters | None = None  # the personal-data gate's counters, where it ran


def add_bytes(
    session: Session, transfer_id: str, count: int, note: str | None = None, served: Served | None = None
) -> None:
    values: dict[str, object] = {
        "bytes_transferred": _T.bytes_transferred + count,
        "updated_at": now_millis(),
    }
    if note is not None:
        values["error_detail"] = note[:4000]
    if served is not None:
        values["payload_sha256"] = served.payload_sha256
        values["records"] = _T.records + served.records
        if served.gate is not None:
            row = session.get(TransferRow, transfer_id, with_for_update=True)
            if row is not None:
                counters = served.gate
                values["consent_summary"] = evidence.merge_consent(
                    row.consent_summary, counters.decisions, counters.released, counters.withheld
                )
    session.execute(update(_TABLE).where(_T.id == transfer_id).values(**values))
    session.commit()


def refresh(session: Session, core: ServiceCore, peer_did: str, refresh_token: str) -> dict[str, str]:
    """A new token pair for the transfer a refresh token names; the old access token stops working."""
    claims = check_token(core, refresh_token, tokens.REFRESH)
    row = session.get(TransferRow, claims.transfer_id, with_for_update=True)
    if row is None or row.role != Role.PROVIDER.value or claims.consumer != peer_did:
        raise AccessDenied(403, "wrong_party", "the refresh token was not issued to you")
    if claims.access_jti != row.token_id:
        raise AccessDenied(401, "replaced", "the refresh token has been used or replaced")
    if row.state not in (State.STARTED.value, State.SUSPENDED.value, State.REQUESTED.value):
        raise AccessDenied(403, "state", f"the transfer is {row.state}: no new token is issued")
    address = new_data_address(core, row)
    row.updated_at = now_millis()
    session.add(row)
    session.commit()
    return endpoint_properties(address)


class TransferStop:
    """The stop signal of a live stream: True once the transfer is no longer STARTED or is being ended.

    Polled by the source (every ``stop_poll_seconds``); reads the row at most every ``interval``.
    """

    def __init__(self, engine: Engine, transfer_id: str, interval: float = 0.5) -> None:
        self._engine = engine
        self._transfer_id = transfer_id
        self._interval = interval
        self._next = 0.0
        self._stopped = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self._stopped or now < self._next:
            return self._stopped
        self._next = now + self._interval
        with Session(self._engine) as session:
            row = session.get(TransferRow, self._transfer_id)
            self._stopped = row is None or row.state != State.STARTED.value or row.pending_message is not None
        return self._stopped
