"""The DSP 2025-1 transfer state machine, transition by transition (the specification's diagram)."""

from __future__ import annotations

import pytest

from connector.transfer_states import Message, Role, State, TransitionError, allowed_messages, transition

P, C = Role.PROVIDER, Role.CONSUMER

# (state, message, sender) -> the state after, for every transition the diagram draws
ALLOWED = {
    (None, Message.REQUEST, C): State.REQUESTED,
    (State.REQUESTED, Message.START, P): State.STARTED,
    (State.REQUESTED, Message.TERMINATION, C): State.TERMINATED,
    (State.REQUESTED, Message.TERMINATION, P): State.TERMINATED,
    (State.STARTED, Message.COMPLETION, P): State.COMPLETED,
    (State.STARTED, Message.COMPLETION, C): State.COMPLETED,
    (State.STARTED, Message.SUSPENSION, P): State.SUSPENDED,
    (State.STARTED, Message.SUSPENSION, C): State.SUSPENDED,
    (State.STARTED, Message.TERMINATION, P): State.TERMINATED,
    (State.STARTED, Message.TERMINATION, C): State.TERMINATED,
    (State.SUSPENDED, Message.START, P): State.STARTED,
    (State.SUSPENDED, Message.START, C): State.STARTED,
    (State.SUSPENDED, Message.TERMINATION, P): State.TERMINATED,
    (State.SUSPENDED, Message.TERMINATION, C): State.TERMINATED,
}
EVERY = [(s, m, r) for s in [None, *State] for m in Message for r in Role]


@pytest.mark.parametrize(("state", "message", "sender"), EVERY, ids=lambda v: str(v))
def test_exactly_the_diagrams_transitions_are_allowed(
    state: State | None, message: Message, sender: Role
) -> None:
    expected = ALLOWED.get((state, message, sender))
    if expected is not None:
        assert transition(state, message, sender) is expected
    else:
        with pytest.raises(TransitionError):
            transition(state, message, sender)


def test_refusals_say_why() -> None:
    with pytest.raises(
        TransitionError, match="a consumer cannot send TransferStartMessage in state REQUESTED"
    ):
        transition(State.REQUESTED, Message.START, C)
    with pytest.raises(TransitionError, match="the transfer is COMPLETED; it accepts no more messages"):
        transition(State.COMPLETED, Message.TERMINATION, P)
    with pytest.raises(TransitionError, match="a provider cannot send TransferRequestMessage"):
        transition(None, Message.REQUEST, P)
    with pytest.raises(TransitionError, match="TransferSuspensionMessage is not allowed in state SUSPENDED"):
        transition(State.SUSPENDED, Message.SUSPENSION, C)


def test_allowed_messages_lists_what_each_side_may_send() -> None:
    assert allowed_messages(State.REQUESTED, C) == [Message.TERMINATION]
    assert allowed_messages(State.REQUESTED, P) == [Message.START, Message.TERMINATION]
    assert allowed_messages(State.SUSPENDED, C) == [Message.START, Message.TERMINATION]
    assert allowed_messages(State.TERMINATED, P) == []
