"""DPV consent states and how a record's current state follows from its events.

Only ``ConsentGiven`` and ``RenewedConsentGiven`` permit processing, and only while the consent
has not expired and was given for a revision the controller has not since replaced by a material
change (then the state reads ``ConsentInvalidated`` until the citizen decides again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class DpvState(StrEnum):
    UNKNOWN = "ConsentUnknown"  # no decision recorded
    GIVEN = "ConsentGiven"
    RENEWED = "RenewedConsentGiven"
    REFUSED = "ConsentRefused"
    WITHDRAWN = "ConsentWithdrawn"
    EXPIRED = "ConsentExpired"
    INVALIDATED = "ConsentInvalidated"  # derived: the agreement changed materially


GIVEN_STATES = frozenset({DpvState.GIVEN, DpvState.RENEWED})


class EventLike(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def agreement_version(self) -> int: ...
    @property
    def at(self) -> int: ...
    @property
    def expires_at(self) -> int | None: ...


@dataclass(frozen=True)
class LastEvent:
    state: str
    agreement_version: int
    at: int
    expires_at: int | None


@dataclass(frozen=True)
class CurrentState:
    state: DpvState
    valid: bool
    agreement_version: int | None
    since: int | None
    expires_at: int | None


def derive_state(events: Sequence[EventLike], *, min_version: int, now: int) -> CurrentState:
    """The current state after ``events`` (oldest first)."""
    if not events:
        return CurrentState(DpvState.UNKNOWN, False, None, None, None)
    last = events[-1]
    state = DpvState(last.state)
    if state in GIVEN_STATES:
        if last.expires_at is not None and last.expires_at <= now:
            return CurrentState(
                DpvState.EXPIRED, False, last.agreement_version, last.expires_at, last.expires_at
            )
        if last.agreement_version < min_version:
            return CurrentState(DpvState.INVALIDATED, False, last.agreement_version, last.at, last.expires_at)
        return CurrentState(state, True, last.agreement_version, last.at, last.expires_at)
    return CurrentState(state, False, last.agreement_version, last.at, None)


def next_given_state(events: Sequence[EventLike]) -> DpvState:
    """``RenewedConsentGiven`` when consent was given before in this record, else ``ConsentGiven``."""
    return DpvState.RENEWED if any(e.state in GIVEN_STATES for e in events) else DpvState.GIVEN
