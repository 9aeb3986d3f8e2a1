"""EDR negotiations: negotiations that, once FINALIZED, ask for a pull transfer by themselves.

``POST /management/v3/edrs`` starts one; ``connector.edr_worker`` calls
``advance`` when the negotiation has finished (the DSP route's kick on
FINALIZED, or its poll). The ``edr_negotiation`` row says what the transfer
will declare and, once asked for, which transfer it is, or why there is none.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.queryspec import table_of
from connector.edr_models import FAILED, NEGOTIATING, TRANSFER_REQUESTED, EdrNegotiationRow
from connector.edrs import PULL_FORMAT
from connector.negotiations import consumer_start
from connector.transfers import TransferError, consumer_request
from contracts.models import NegotiationRow
from contracts.negotiation import State as NegotiationState
from runtime.logging import get_logger
from runtime.service import ServiceCore

_E = table_of(EdrNegotiationRow)
_N = table_of(NegotiationRow).c
log = get_logger("tessera.edr")


def agreed_purpose(offer: dict[str, Any]) -> str | None:
    """The one purpose an offer's permissions name with ``eq``, if exactly one; else None."""
    found: set[str] = set()
    rules = offer.get("permission") or []
    for rule in rules if isinstance(rules, list) else [rules]:
        constraints = (rule.get("constraint") or []) if isinstance(rule, dict) else []
        for constraint in constraints if isinstance(constraints, list) else [constraints]:
            if (
                isinstance(constraint, dict)
                and str(constraint.get("leftOperand", "")).rsplit("/", 1)[-1].endswith("purpose")
                and str(constraint.get("operator", "")).rsplit("/", 1)[-1] in ("eq", "odrl:eq")
                and isinstance(constraint.get("rightOperand"), str)
            ):
                found.add(constraint["rightOperand"])
    return found.pop() if len(found) == 1 else None


def start_edr_negotiation(
    session: Session,
    core: ServiceCore,
    *,
    counter_party: str,
    address: str,
    offer: dict[str, Any],
    purpose: str | None,
    callback_addresses: list[dict[str, Any]] | None,
) -> NegotiationRow:
    """Negotiate for ``offer``; on FINALIZED a pull transfer declaring ``purpose`` starts by itself.

    Without a purpose, the transfer declares the offer's purpose when the offer names exactly one.
    """
    # One commit for the negotiation and its EDR row: a negotiation saved without it would never
    # start its transfer (and the client, never answered, would start another).
    row = consumer_start(session, core, counter_party, address, offer, "automatic", commit=False)
    session.add(
        EdrNegotiationRow(
            negotiation_id=row.id,
            state=NEGOTIATING,
            purpose=purpose or agreed_purpose(offer),
            callback_addresses=json.dumps(callback_addresses) if callback_addresses else None,
            created_at=row.created_at,
            updated_at=row.created_at,
        )
    )
    session.commit()
    return row


def negotiations_to_advance(session: Session) -> list[str]:
    """EDR negotiations still waiting whose negotiation has finished (FINALIZED or TERMINATED)."""
    finished = (NegotiationState.FINALIZED.value, NegotiationState.TERMINATED.value)
    statement = (
        select(_E.c.negotiation_id)
        .join(table_of(NegotiationRow), _N.id == _E.c.negotiation_id)
        .where(_E.c.state == NEGOTIATING, _N.state.in_(finished))
        .limit(50)
    )
    return list(session.scalars(statement))


def awaits_transfer(session: Session, negotiation_id: str) -> bool:
    """Is this an EDR negotiation whose transfer has not been asked for yet?"""
    state = session.execute(select(_E.c.state).where(_E.c.negotiation_id == negotiation_id)).scalar()
    return bool(state == NEGOTIATING)


def _fail(session: Session, negotiation_id: str, reason: str) -> None:
    session.execute(
        update(_E)
        .where(_E.c.negotiation_id == negotiation_id, _E.c.state == NEGOTIATING)
        .values(state=FAILED, error_detail=reason[:4000], updated_at=now_millis())
    )
    session.commit()
    log.warning("EDR negotiation starts no transfer", negotiation=negotiation_id, reason=reason)


def advance(session: Session, core: ServiceCore, negotiation_id: str) -> str | None:
    """Ask for the pull transfer of a FINALIZED EDR negotiation: its transfer id, or None.

    Claiming the row (a conditional UPDATE), creating the transfer and linking it commit together,
    so two workers (or replicas) never both start one, and a crash starts none or exactly one.
    """
    negotiation = session.get(NegotiationRow, negotiation_id)
    edr = session.get(EdrNegotiationRow, negotiation_id)
    if negotiation is None or edr is None or edr.state != NEGOTIATING:
        return None
    if negotiation.state == NegotiationState.TERMINATED.value:
        _fail(session, negotiation_id, f"the negotiation was terminated: {negotiation.error_detail or ''}")
        return None
    if negotiation.state != NegotiationState.FINALIZED.value or not negotiation.agreement_id:
        return None
    purpose, callbacks = edr.purpose, json.loads(edr.callback_addresses) if edr.callback_addresses else None
    session.expunge(edr)
    claimed = session.connection().execute(  # in the session's transaction
        update(_E)
        .where(_E.c.negotiation_id == negotiation_id, _E.c.state == NEGOTIATING)
        .values(state=TRANSFER_REQUESTED, updated_at=now_millis())
    )
    if not claimed.rowcount:
        session.rollback()
        return None
    try:
        transfer = consumer_request(  # in the claim's transaction
            session,
            core,
            address=negotiation.counter_party_address,
            agreement_id=negotiation.agreement_id,
            transfer_type=PULL_FORMAT,
            destination=None,
            purpose=purpose,
            callback_addresses=callbacks,
            commit=False,
        )
    except TransferError as exc:
        session.rollback()
        _fail(session, negotiation_id, f"the transfer could not be requested: {exc.reason}")
        return None
    transfer_id = transfer.id
    session.execute(update(_E).where(_E.c.negotiation_id == negotiation_id).values(transfer_id=transfer_id))
    session.commit()
    return transfer_id
