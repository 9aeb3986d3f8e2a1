"""The DSP 2025-1 transfer process state machine: states, messages, who may send what when.

Pure logic, no I/O, like ``contracts.negotiation``: the protocol routes
(messages a peer sends us), the operator's actions and the data plane's
usage-control decisions (messages we send) all ask ``transition``.

The specification's diagram: the consumer requests (REQUESTED); only the
provider starts a requested transfer; either side may suspend or complete a
STARTED transfer, resume a SUSPENDED one (a TransferStartMessage from either
side) and terminate any transfer that is not finished. COMPLETED and
TERMINATED are final.
"""

from __future__ import annotations

from enum import StrEnum

from contracts.negotiation import Role

__all__ = ["TERMINAL", "Message", "Role", "State", "TransitionError", "allowed_messages", "transition"]


class State(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


class Message(StrEnum):
    """Each kind of transfer message, named by its DSP type."""

    REQUEST = "TransferRequestMessage"
    START = "TransferStartMessage"
    SUSPENSION = "TransferSuspensionMessage"
    COMPLETION = "TransferCompletionMessage"
    TERMINATION = "TransferTerminationMessage"


TERMINAL = frozenset({State.COMPLETED, State.TERMINATED})
_BOTH = frozenset({Role.PROVIDER, Role.CONSUMER})

# message -> [(who may send it, from which states (None: it creates the transfer))], and the state after
RULES: dict[Message, tuple[list[tuple[frozenset[Role], frozenset[State | None]]], State]] = {
    Message.REQUEST: ([(frozenset({Role.CONSUMER}), frozenset({None}))], State.REQUESTED),
    Message.START: (
        [
            (frozenset({Role.PROVIDER}), frozenset({State.REQUESTED})),
            (_BOTH, frozenset({State.SUSPENDED})),  # resuming
        ],
        State.STARTED,
    ),
    Message.SUSPENSION: ([(_BOTH, frozenset({State.STARTED}))], State.SUSPENDED),
    Message.COMPLETION: ([(_BOTH, frozenset({State.STARTED}))], State.COMPLETED),
    Message.TERMINATION: (
        [(_BOTH, frozenset({State.REQUESTED, State.STARTED, State.SUSPENDED}))],
        State.TERMINATED,
    ),
}


class TransitionError(ValueError):
    """The message is not allowed now; the transfer is unchanged."""


def transition(current: State | None, message: Message, sender: Role) -> State:
    """The state after ``sender`` sends ``message`` in state ``current``, or TransitionError."""
    paths, after = RULES[message]
    if not any(sender in senders for senders, _ in paths):
        raise TransitionError(f"a {sender.value} cannot send {message.value}")
    if current in TERMINAL:
        raise TransitionError(f"the transfer is {current.value}; it accepts no more messages")
    if any(sender in senders and current in states for senders, states in paths):
        return after
    where = current.value if current is not None else "a new transfer"
    if any(current in states for _, states in paths):
        raise TransitionError(f"a {sender.value} cannot send {message.value} in state {where}")
    raise TransitionError(f"{message.value} is not allowed in state {where}")


def allowed_messages(current: State | None, sender: Role) -> list[Message]:
    """What ``sender`` may send next (for operator pages and error messages)."""
    return [
        message
        for message, (paths, _) in RULES.items()
        if any(sender in senders and current in states for senders, states in paths)
    ]
