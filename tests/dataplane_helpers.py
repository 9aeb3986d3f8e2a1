"""Helpers for the data-plane tests: collecting streams, gates that behave in known ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterable, Sequence

from connector.dataplane.gate import GateContext, GateDecision

CONTEXT = GateContext(
    controller="did:web:transit.example",
    recipient="did:web:city.example",
    purpose="traffic-planning",
    dataset_id="card-trips",
    transfer_id="transfer-1",
)


async def collect(chunks: AsyncIterable[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def from_parts(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class ListGate:
    """Releases exactly the subjects it was told (a stand-in for the consent service's answers)."""

    def __init__(self, allowed: Collection[str], reason: str = "no consent") -> None:
        self.allowed = frozenset(allowed)
        self.reason = reason
        self.calls: list[list[str]] = []

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        self.calls.append(list(subjects))
        return GateDecision(self.allowed & set(subjects), f"decision-{len(self.calls)}", self.reason)


class AlwaysYesGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        return GateDecision(frozenset(subjects), "yes")


class RaisingGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        raise ConnectionError("consent service unreachable")


class HangingGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class GarbageGate:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        return self.answer  # type: ignore[return-value]  # garbage on purpose
