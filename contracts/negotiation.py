"""The DSP 2025-1 contract negotiation state machine: states, messages, who may send what when.

Pure logic, no I/O: both the protocol routes (messages a peer sends us) and
the operator's actions (messages we send) ask ``transition`` whether a step
is allowed, so the two can never disagree about the specification.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"


class Role(StrEnum):
    PROVIDER = "provider"
    CONSUMER = "consumer"

    @property
    def other(self) -> Role:
        return Role.CONSUMER if self is Role.PROVIDER else Role.PROVIDER


class Message(StrEnum):
    """Each kind of negotiation message, named by the DSP type (events by their event type)."""

    REQUEST = "ContractRequestMessage"
    OFFER = "ContractOfferMessage"
    ACCEPTED = "ACCEPTED"  # ContractNegotiationEventMessage, eventType ACCEPTED
    AGREEMENT = "ContractAgreementMessage"
    VERIFICATION = "ContractAgreementVerificationMessage"
    FINALIZED = "FINALIZED"  # ContractNegotiationEventMessage, eventType FINALIZED
    TERMINATION = "ContractNegotiationTerminationMessage"


TERMINAL = frozenset({State.FINALIZED, State.TERMINATED})
_ANY_OPEN = frozenset(State) - TERMINAL

# message -> (who may send it, the states it may arrive in (None: it starts a negotiation), the state after)
RULES: dict[Message, tuple[frozenset[Role], frozenset[State | None], State]] = {
    Message.REQUEST: (frozenset({Role.CONSUMER}), frozenset({None, State.OFFERED}), State.REQUESTED),
    Message.OFFER: (frozenset({Role.PROVIDER}), frozenset({None, State.REQUESTED}), State.OFFERED),
    Message.ACCEPTED: (frozenset({Role.CONSUMER}), frozenset({State.OFFERED}), State.ACCEPTED),
    Message.AGREEMENT: (
        frozenset({Role.PROVIDER}),
        frozenset({State.REQUESTED, State.ACCEPTED}),
        State.AGREED,
    ),
    Message.VERIFICATION: (frozenset({Role.CONSUMER}), frozenset({State.AGREED}), State.VERIFIED),
    Message.FINALIZED: (frozenset({Role.PROVIDER}), frozenset({State.VERIFIED}), State.FINALIZED),
    Message.TERMINATION: (frozenset({Role.PROVIDER, Role.CONSUMER}), frozenset(_ANY_OPEN), State.TERMINATED),
}


class TransitionError(ValueError):
    """The message is not allowed now; the negotiation is unchanged."""


def transition(current: State | None, message: Message, sender: Role) -> State:
    """The state after ``sender`` sends ``message`` in state ``current``, or TransitionError."""
    senders, allowed_from, after = RULES[message]
    if sender not in senders:
        raise TransitionError(f"a {sender.value} cannot send {message.value}")
    if current in TERMINAL:
        raise TransitionError(f"the negotiation is {current.value}; it accepts no more messages")
    if current not in allowed_from:
        where = current.value if current is not None else "a new negotiation"
        raise TransitionError(f"{message.value} is not allowed in state {where}")
    return after


def allowed_messages(current: State | None, sender: Role) -> list[Message]:
    """What ``sender`` may send next (for operator pages and error messages)."""
    return [m for m, (senders, states, _) in RULES.items() if sender in senders and current in states]
