"""Releasing only the records whose subject the gate admits, as the bytes stream past.

Records are framed by media type (``records``), collected into batches (1,000 by default),
and each batch's distinct subjects are put to the gate in one call; the admitted records are
written out whole, in their original order and bytes. A record without a subject is
withheld. If the gate raises, times out or answers something that is not a decision for the
asked subjects, the stream stops with ``GateFailure`` (fail closed): what was written before
is whole records that the gate admitted, nothing after. Subject ids are never logged.

For a live source, ``flush_after`` bounds how long a record waits for its batch to fill:
the batch is decided when it is full or that many seconds after its first record arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from connector.dataplane.gate import GateContext, GateDecision, GateFailure, PersonalDataGate
from connector.dataplane.records import MAX_RECORD_BYTES, RecordFormatError, RecordFramer, framer_for

DEFAULT_BATCH_SIZE = 1000
DEFAULT_DECISION_TIMEOUT = 10.0


class GateUnavailable(GateFailure):
    """The gate raised or did not answer in time."""


class GateGarbage(GateFailure):
    """The gate answered something that is not a decision for the subjects asked."""


class UnfilterableData(GateFailure):
    """The data is not records of its media type (or of no type records can be read from)."""


@dataclass
class GateCounters:
    """What the gate let through and held back in one transfer (for its log and the consent report)."""

    released: int = 0
    withheld: int = 0
    without_subject: int = 0  # withheld because the record names no subject (included in ``withheld``)
    decisions: dict[str, int] = field(default_factory=dict)  # decision id → records it decided
    reasons: dict[str, int] = field(default_factory=dict)  # a gate's reason → records withheld under it

    def as_dict(self) -> dict[str, object]:
        return {
            "released": self.released,
            "withheld": self.withheld,
            "withoutSubject": self.without_subject,
            "decisions": dict(self.decisions),
            "reasons": dict(self.reasons),
        }


class GatedStream:
    """A filter for one transfer's stream; read ``counters`` while or after it runs."""

    def __init__(
        self,
        gate: PersonalDataGate,
        context: GateContext,
        *,
        media_type: str,
        subject_field: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        decision_timeout: float = DEFAULT_DECISION_TIMEOUT,
        flush_after: float | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not subject_field:
            raise UnfilterableData("the asset is personal but names no subject field")
        self._gate = gate
        self._context = context
        self._batch_size = batch_size
        self._timeout = decision_timeout
        self._flush_after = flush_after
        try:
            self._framer: RecordFramer = framer_for(media_type, subject_field, max_record_bytes)
        except RecordFormatError as exc:
            raise UnfilterableData(str(exc)) from None
        self.counters = GateCounters()
        # subject → its records released (the consent report's per-subject counts; never logged)
        self.released_by_subject: Counter[str] = Counter()
        self._raws: list[bytes] = []
        self._subjects: list[str | None] = []
        self._wrote_header = False
        self._wrote_record = False

    @property
    def gate(self) -> PersonalDataGate:
        return self._gate

    @property
    def context(self) -> GateContext:
        return self._context

    async def filter(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The admitted records of ``chunks``, in the same format (whole records only).

        Closing the returned iterator early (a consumer gone) closes ``chunks`` at once too.
        """
        try:
            if self._flush_after is None:
                async for chunk in chunks:
                    for out in await self._take(self._frame(chunk), final=False):
                        yield out
            else:
                async for out in self._filter_timed(chunks, self._flush_after):
                    yield out
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        for out in await self._take(self._finish(), final=True):
            yield out
        trailer = self._header() + self._framer.trailer
        if trailer:
            yield trailer

    async def _filter_timed(self, chunks: AsyncIterable[bytes], flush_after: float) -> AsyncIterator[bytes]:
        iterator = aiter(chunks)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[bytes] | None = None
        first_waiting_since: float | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(iterator))
                timeout = None
                if self._raws and first_waiting_since is not None:
                    timeout = max(0.0, first_waiting_since + flush_after - loop.time())
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:  # the batch waited long enough: decide what we have
                    for out in await self._take(([], []), final=True):
                        yield out
                    first_waiting_since = None
                    continue
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    pending = None
                    return
                pending = None
                outputs = await self._take(self._frame(chunk), final=False)
                if not self._raws:
                    first_waiting_since = None
                elif first_waiting_since is None or outputs:
                    first_waiting_since = loop.time()
                for out in outputs:
                    yield out
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending

    def _frame(self, chunk: bytes) -> tuple[list[bytes], list[str | None]]:
        try:
            return self._framer.feed(chunk)
        except RecordFormatError as exc:
            raise UnfilterableData(str(exc)) from None

    def _finish(self) -> tuple[list[bytes], list[str | None]]:
        try:
            return self._framer.finish()
        except RecordFormatError as exc:
            raise UnfilterableData(str(exc)) from None

    def _header(self) -> bytes:
        if self._wrote_header:
            return b""
        self._wrote_header = True
        return self._framer.header

    async def _take(self, records: tuple[list[bytes], list[str | None]], *, final: bool) -> list[bytes]:
        """Add framed records to the batch; decide every full batch (and the rest when ``final``)."""
        raws, subjects = records
        self._raws.extend(raws)
        self._subjects.extend(subjects)
        outputs: list[bytes] = []
        size = self._batch_size
        while len(self._raws) >= size or (final and self._raws):
            batch_raws, self._raws = self._raws[:size], self._raws[size:]
            batch_subjects, self._subjects = self._subjects[:size], self._subjects[size:]
            kept = await self._decide(batch_raws, batch_subjects)
            if kept:
                out = self._header() + self._framer.join(kept, first=not self._wrote_record)
                self._wrote_record = True
                outputs.append(out)
        return outputs

    async def _decide(self, raws: list[bytes], subjects: list[str | None]) -> list[bytes]:
        counters = self.counters
        missing = subjects.count(None)
        if missing:
            counters.without_subject += missing
            counters.withheld += missing
        asked = set(subjects)
        asked.discard(None)
        if not asked:
            return []
        decision = await self._ask(asked)  # type: ignore[arg-type]  # None was discarded
        released = decision.released
        if not missing and len(released) == len(asked):
            kept = raws  # every subject admitted
        else:
            kept = [raw for raw, subject in zip(raws, subjects, strict=True) if subject in released]
        if kept is raws:
            self.released_by_subject.update(subjects)  # type: ignore[arg-type]  # no None: none missing
        else:
            self.released_by_subject.update(s for s in subjects if s in released)
        decided = len(subjects) - missing
        withheld = decided - len(kept)
        counters.released += len(kept)
        counters.withheld += withheld
        counters.decisions[decision.decision_id] = counters.decisions.get(decision.decision_id, 0) + decided
        if withheld and decision.reason:
            counters.reasons[decision.reason] = counters.reasons.get(decision.reason, 0) + withheld
        return kept

    async def _ask(self, asked: set[str]) -> GateDecision:
        try:
            decision = await asyncio.wait_for(self._gate.decide(list(asked), self._context), self._timeout)
        except TimeoutError:
            raise GateUnavailable(
                f"the personal-data gate did not answer within {self._timeout:g} s"
            ) from None
        except GateFailure:
            raise
        except Exception as exc:
            raise GateUnavailable(f"the personal-data gate failed: {type(exc).__name__}") from None
        if not isinstance(decision, GateDecision):
            raise GateGarbage("the personal-data gate answered something that is not a decision")
        if not isinstance(decision.decision_id, str) or not decision.decision_id:
            raise GateGarbage("the personal-data gate answered without a decision id")
        released = decision.released
        if not isinstance(released, frozenset | set):
            raise GateGarbage("the personal-data gate answered released subjects that are not ids")
        if not released <= asked:  # also proves every released id is one of the (text) ids asked
            raise GateGarbage("the personal-data gate released subjects it was not asked about")
        if decision.reason is not None and not isinstance(decision.reason, str):
            raise GateGarbage("the personal-data gate answered a reason that is not text")
        return decision
