"""The personal-data gate: who decides which subjects' records may leave.

A gate answers for a batch of subject ids at once, in the context of one transfer
(controller = the providing participant, recipient = the consuming one, the purpose of the
agreement, the dataset and the transfer). The consent service's client implements
``PersonalDataGate``; until one is configured, ``ClosedGate`` answers for every asset
flagged personal, and releases nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

CLOSED_GATE_DECISION = "closed-gate"
CLOSED_GATE_REASON = "no consent service configured"


@dataclass(frozen=True)
class GateContext:
    controller: str  # DID of the providing participant (the data controller)
    recipient: str  # DID of the consuming participant
    purpose: str  # the purpose of the agreement
    dataset_id: str
    transfer_id: str


@dataclass(frozen=True)
class GateDecision:
    """Which of the asked subjects may be released, under which decision (for the transfer log)."""

    released: frozenset[str]
    decision_id: str
    reason: str | None = None  # why the others were withheld, when the gate says


class GateFailure(Exception):
    """Nothing more may be released: the gate failed, timed out or answered garbage.

    The control plane terminates the transfer with ``reason``. Subclasses tell the kinds apart.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class PersonalDataGate(Protocol):
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        """Decide for distinct ``subjects``; ``released`` must be a subset of them."""
        ...


class ClosedGate:
    """The gate without a consent service: every subject is withheld, and the decision says why."""

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        return GateDecision(frozenset(), CLOSED_GATE_DECISION, CLOSED_GATE_REASON)
