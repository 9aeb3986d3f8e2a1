"""Usage control: does the agreed policy admit this use of the data, now?

Asked when a transfer is requested, started, resumed, and at every data
access. The context is what the policy may constrain: the consumer, its
memberships, the purpose it declared in its transfer request, the time, the
time elapsed since the agreement, and the number of accesses under the
agreement (counting the one being decided).

The decision goes through the connector's policy engine (the compiled
contract policy the agreement was made from), as long as that policy's terms
are still the agreed ones (the offer id carries their fingerprint). If the
provider has changed the policy since, the agreement's own terms are decided
with the same decision procedure instead. Anything that cannot be evaluated
denies: fail closed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session

from catalog.contract_definitions import get_contract_definition
from contracts.agreed_terms import agreed_policy
from contracts.agreements import AgreementRecord
from contracts.models import NegotiationRow
from contracts.offers import parse_offer_id, policy_fingerprint
from identity.trustlist import get_member
from policies.decision import Decision, RequestContext, decide, parse_time
from policies.definitions import get_policy_definition
from policies.odrl import PolicyError
from runtime.service import ServiceCore


@dataclass(frozen=True)
class Use:
    """One use to decide: who, under which agreement, for what purpose, which access (1-based)."""

    agreement: AgreementRecord
    consumer: str
    purpose: str | None
    access_number: int | None  # None: not an access (a request or a resume), count not constrained yet


def agreed_at(agreement: AgreementRecord) -> datetime:
    stamp = parse_time(agreement.agreement.get("timestamp"))
    return stamp or datetime.fromtimestamp(agreement.signed_at / 1000, UTC)


def context_for(session: Session, use: Use, now: datetime | None = None) -> RequestContext:
    member = get_member(session, use.consumer)
    return RequestContext(
        participant_id=use.consumer,
        memberships=frozenset(member.memberships if member else ()),
        purpose=use.purpose,
        now=now or datetime.now(UTC),
        agreed_at=agreed_at(use.agreement),
        access_count=use.access_number if use.access_number is not None else 1,
    )


def _agreed_policy_id(session: Session, agreement: AgreementRecord) -> str | None:
    """The policy definition the agreement was made from, if its terms are still the agreed ones."""
    negotiation = session.get(NegotiationRow, agreement.negotiation_id)
    if negotiation is None or negotiation.contract_definition_id is None:
        return None
    parsed = parse_offer_id(str(json.loads(negotiation.offer).get("@id", "")))
    definition = get_contract_definition(session, negotiation.contract_definition_id)
    contract = get_policy_definition(session, definition.contract_policy_id) if definition else None
    if parsed is None or contract is None:
        return None
    if policy_fingerprint(contract.policy_node) != parsed.policy_fingerprint:
        return None
    return contract.id


def decide_agreed_terms(agreement: AgreementRecord, context: RequestContext) -> Decision:
    """The agreement's own terms (DSP form), read as ODRL and decided directly."""
    try:
        policy = agreed_policy(agreement)
    except PolicyError as exc:
        return Decision(False, (f"the agreed terms cannot be evaluated ({exc}): denied",))
    return decide(policy, context)


def decide_use(session: Session, core: ServiceCore, use: Use, now: datetime | None = None) -> Decision:
    context = context_for(session, use, now)
    policy_id = _agreed_policy_id(session, use.agreement)
    if policy_id is not None:
        return core.policy_engine.decide(policy_id, context)
    return decide_agreed_terms(use.agreement, context)


def only_the_count_denies(session: Session, core: ServiceCore, use: Use, now: datetime | None = None) -> bool:
    """Would the first access be admitted? Then the agreed number of accesses is what ran out."""
    first = Use(use.agreement, use.consumer, use.purpose, 1)
    return use.access_number not in (None, 1) and decide_use(session, core, first, now).allowed
