"""The personal-data gate: only admitted subjects' records leave, whole, and a failing gate stops all."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import pytest

from connector.dataplane.gate import (
    CLOSED_GATE_DECISION,
    CLOSED_GATE_REASON,
    ClosedGate,
    GateDecision,
    GateFailure,
    PersonalDataGate,
)
from connector.dataplane.gated_stream import GatedStream, GateGarbage, GateUnavailable, UnfilterableData
from tests.dataplane_helpers import (
    CONTEXT,
    AlwaysYesGate,
    GarbageGate,
    HangingGate,
    ListGate,
    RaisingGate,
    chunked,
    collect,
    from_parts,
)

NDJSON = "application/x-ndjson"
TRIPS = [
    {"card_id": rider, "from": "Central", "to": 'Harbour, "east"', "n": n}
    for n in range(5)
    for rider in ("card-alice", "card-bob", "card-carol")
]


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def run_filter(
    gate: PersonalDataGate, data: bytes, media_type: str = NDJSON, chunk: int = 7, **options: Any
) -> tuple[bytes, GatedStream]:
    stream = GatedStream(
        gate, CONTEXT, media_type=media_type, subject_field=options.pop("field", "card_id"), **options
    )
    return asyncio.run(collect(stream.filter(chunked(data, chunk)))), stream


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_ndjson_releases_only_admitted_subjects_whole_and_in_order(chunk: int) -> None:
    gate = ListGate({"card-alice", "card-carol"})
    out, stream = run_filter(gate, ndjson(TRIPS), chunk=chunk, batch_size=4)
    released = [json.loads(line) for line in out.decode().splitlines()]
    assert released == [r for r in TRIPS if r["card_id"] != "card-bob"]
    assert out.endswith(b"\n")
    counters = stream.counters
    assert (counters.released, counters.withheld, counters.without_subject) == (10, 5, 0)
    assert sum(counters.decisions.values()) == 15
    assert len(counters.decisions) == 4
    assert counters.reasons == {"no consent": 5}
    assert all(
        len(call) == len(set(call)) <= 4 for call in gate.calls
    )  # distinct subjects, one call per batch


def test_records_without_a_subject_are_withheld() -> None:
    data = (
        b'{"card_id": "card-alice", "n": 1}\n'
        b'{"n": 2}\n'  # no subject field
        b'{"card_id": null}\n'
        b'{"card_id": {"nested": "card-alice"}}\n'
        b'{"other": {"card_id": "card-alice"}}\n'  # nested is not top-level
        b"not json at all card-alice\n"
        b"\n"  # a blank line is no record
        b'["card-alice"]\n'
        b'{"card_id": 42}\n'  # an integer id counts as its text
        b'{"card_id": "card-alice", "n": 9}'  # last line without newline
    )
    out, stream = run_filter(ListGate({"card-alice", "42"}), data)
    assert out == b'{"card_id": "card-alice", "n": 1}\n{"card_id": 42}\n{"card_id": "card-alice", "n": 9}\n'
    assert (stream.counters.released, stream.counters.withheld, stream.counters.without_subject) == (3, 6, 6)


def test_closed_gate_releases_nothing_and_says_why() -> None:
    out, stream = run_filter(ClosedGate(), ndjson(TRIPS))
    assert out == b""
    assert stream.counters.released == 0
    assert stream.counters.withheld == len(TRIPS)
    assert stream.counters.decisions == {CLOSED_GATE_DECISION: len(TRIPS)}
    assert stream.counters.reasons == {CLOSED_GATE_REASON: len(TRIPS)}
    assert CLOSED_GATE_REASON == "no consent service configured"


@pytest.mark.parametrize(
    ("gate", "error", "reason"),
    [
        (RaisingGate(), GateUnavailable, "the personal-data gate failed: ConnectionError"),
        (HangingGate(), GateUnavailable, "did not answer within 0.2 s"),
        (GarbageGate({"released": ["card-alice"]}), GateGarbage, "not a decision"),
        (GarbageGate(GateDecision(frozenset({"card-mallory"}), "d1")), GateGarbage, "not asked about"),
        (GarbageGate(GateDecision(frozenset({"card-alice"}), "")), GateGarbage, "without a decision id"),
        (GarbageGate(GateDecision(["card-alice"], "d1")), GateGarbage, "not ids"),  # type: ignore[arg-type]
    ],
)
def test_a_failing_gate_stops_the_stream_after_whole_admitted_records(
    gate: PersonalDataGate, error: type[GateFailure], reason: str
) -> None:
    """The first batch is decided by a good gate, then the gate fails: what left is whole; nothing after."""
    good = ListGate({"card-alice"})
    calls = 0

    class FailsSecond:
        async def decide(self, subjects: Any, context: Any) -> Any:
            nonlocal calls
            calls += 1
            return await (good if calls == 1 else gate).decide(subjects, context)

    stream = GatedStream(
        FailsSecond(), CONTEXT, media_type=NDJSON, subject_field="card_id", batch_size=3, decision_timeout=0.2
    )
    received: list[bytes] = []

    async def run() -> None:
        async for chunk in stream.filter(chunked(ndjson(TRIPS), 5)):
            received.append(chunk)

    with pytest.raises(error) as caught:
        asyncio.run(run())
    assert reason in caught.value.reason
    assert "card-" not in caught.value.reason  # subject ids are never in the reason
    assert b"".join(received) == ndjson([TRIPS[0]])  # the first batch's alice record, whole
    assert stream.counters.released == 1


def test_csv_keeps_the_header_and_quoted_rows_whole() -> None:
    rows = [
        ["card_id", "note", "n"],
        ["card-alice", "plain", "1"],
        ["card-bob", 'with "quotes", a comma\nand a newline', "2"],
        ["card-alice", 'multi\nline\r\nnote, "quoted"', "3"],
        ["card-carol", "x", "4"],
    ]
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(rows)
    data = text.getvalue().encode()
    for chunk in (1, 3, 50, len(data)):
        out, stream = run_filter(
            ListGate({"card-alice"}), data, media_type="text/csv", chunk=chunk, batch_size=2
        )
        parsed = list(csv.reader(io.StringIO(out.decode(), newline="")))
        assert parsed == [rows[0], rows[1], rows[3]], chunk
        assert (stream.counters.released, stream.counters.withheld) == (2, 2)


def test_csv_with_nothing_released_still_has_its_header_and_subject_column_is_required() -> None:
    out, _ = run_filter(ClosedGate(), b"a,card_id\n1,card-x\n", media_type="text/csv")
    assert out == b"a,card_id\n"
    with pytest.raises(UnfilterableData, match="no column 'card_id'"):
        run_filter(ClosedGate(), b"a,b\n1,2\n", media_type="text/csv")
    with pytest.raises(UnfilterableData, match="inside a quoted field"):
        run_filter(AlwaysYesGate(), b'card_id,b\n"x,2\n', media_type="text/csv")


def test_json_array_released_elements_make_a_valid_array() -> None:
    trips: list[dict[str, Any]] = [
        *TRIPS,
        {"card_id": "card-alice", "text": 'brackets ] } [ { and \\" escapes'},
        {"card_id": "card-alice", "stops": [{"name": "Central", "at": [1, 2]}], "geo": {"lat": 1.5}},
        {"card_id": "card-bob", "stops": [], "note": "nested, withheld"},
    ]
    for data in (json.dumps(trips, indent=2).encode(), json.dumps(trips).encode()):
        for chunk in (1, 13, 4096):
            out, stream = run_filter(
                ListGate({"card-alice"}), data, media_type="application/json", chunk=chunk, batch_size=4
            )
            assert json.loads(out) == [t for t in trips if t["card_id"] == "card-alice"], chunk
            assert stream.counters.released == 7
    out, _ = run_filter(ClosedGate(), data, media_type="application/json")
    assert json.loads(out) == []
    out, _ = run_filter(ClosedGate(), b" [ ] ", media_type="application/json")
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"value": []}', "top-level array"),
        (b'[{"card_id": "a"}', "not a complete top-level array"),
        (b'[{"card_id": "a"},]', "empty element"),
        (b'[{"card_id": "a"}] []', "goes on after"),
        (b'[{"card_id": "a" "b"}]', "not valid JSON"),
    ],
)
def test_json_that_is_not_an_array_of_records_fails_closed(data: bytes, message: str) -> None:
    with pytest.raises(UnfilterableData, match=message):
        run_filter(AlwaysYesGate(), data, media_type="application/json")


def test_media_types_without_records_cannot_be_gated() -> None:
    with pytest.raises(UnfilterableData, match="cannot be filtered record by record"):
        GatedStream(ClosedGate(), CONTEXT, media_type="application/octet-stream", subject_field="card_id")


def test_an_oversized_line_stops_the_stream_instead_of_filling_memory() -> None:
    with pytest.raises(UnfilterableData, match="longer than"):
        run_filter(AlwaysYesGate(), b'{"card_id": "' + b"x" * 5000, max_record_bytes=1000, chunk=100)


def test_live_stream_batches_are_decided_within_flush_after() -> None:
    """A record of a live stream waits at most ``flush_after`` for its batch, not for 1,000 records."""
    gate = ListGate({"card-alice"})

    async def run() -> float:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def live() -> Any:
            while (item := await queue.get()) is not None:
                yield item

        stream = GatedStream(gate, CONTEXT, media_type=NDJSON, subject_field="card_id", flush_after=0.2)
        out = stream.filter(live())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await queue.put(b'{"card_id": "card-bob"}\n{"card_id": "card-alice", "n": 1}\n')
        first = await asyncio.wait_for(anext(out), 30)
        waited = loop.time() - started
        assert first == b'{"card_id": "card-alice", "n": 1}\n'
        await queue.put(b'{"card_id": "card-alice", "n": 2}\n')
        assert await asyncio.wait_for(anext(out), 30) == b'{"card_id": "card-alice", "n": 2}\n'
        await queue.put(None)
        assert [c async for c in out] == []
        return waited

    waited = asyncio.run(run())
    assert waited >= 0.15  # it waited for the batch to fill up to the bound…
    assert len(gate.calls) == 2


def test_the_filter_closes_its_source_when_the_consumer_stops() -> None:
    """Closing the output (a consumer that went away) closes the source at once (a live one stops)."""

    async def run() -> bool:
        closed = asyncio.Event()

        async def source() -> Any:
            try:
                for n in range(10**9):
                    yield b'{"card_id": "card-alice", "n": %d}\n' % n
            finally:
                closed.set()

        stream = GatedStream(
            AlwaysYesGate(), CONTEXT, media_type=NDJSON, subject_field="card_id", batch_size=10
        )
        out = stream.filter(source())
        await anext(out)
        await out.aclose()  # type: ignore[attr-defined]
        return closed.is_set()

    assert asyncio.run(run())


def test_records_split_across_chunks_at_any_point_come_out_whole() -> None:
    stream = GatedStream(AlwaysYesGate(), CONTEXT, media_type=NDJSON, subject_field="card_id")
    parts = [b'{"card_id":', b'"a"}\n{"card', b'_id":"b"}']
    assert asyncio.run(collect(stream.filter(from_parts(parts)))) == b'{"card_id":"a"}\n{"card_id":"b"}\n'
    out, _ = run_filter(AlwaysYesGate(), b"", chunk=1)
    assert out == b""


class SteeredGate:
    """Admits alice; each call waits for its own go-ahead (or fails when told), and records overlap."""

    def __init__(self, fail_call: int | None = None) -> None:
        self.fail_call = fail_call
        self.started: list[int] = []
        self.answered: list[int] = []
        self.go: dict[int, asyncio.Event] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.most_at_once = 0

    async def decide(self, subjects: Any, context: Any) -> GateDecision:
        call = len(self.started) + 1
        self.started.append(call)
        self.most_at_once = max(self.most_at_once, len(self.started) - len(self.answered))
        go = self.go.setdefault(call, asyncio.Event())
        try:
            if call == self.fail_call:
                raise ConnectionError("the consent service went away")
            await go.wait()
            return GateDecision(frozenset(subjects) & {"card-alice"}, f"d{call}")
        finally:
            self.answered.append(call)
            self.done.setdefault(call, asyncio.Event()).set()

    async def release(self, call: int) -> None:
        self.go.setdefault(call, asyncio.Event()).set()

    async def answered_call(self, call: int) -> None:
        await self.done.setdefault(call, asyncio.Event()).wait()


def test_pipelined_batches_are_asked_ahead_and_emitted_in_order() -> None:
    """Batch 2 is asked before batch 1 is answered; answers arriving out of order still come out in order."""
    gate = SteeredGate()
    rows = [{"card_id": "card-alice", "n": n} for n in range(12)]
    stream = GatedStream(gate, CONTEXT, media_type=NDJSON, subject_field="card_id", batch_size=3)

    received: list[bytes] = []

    async def run() -> None:
        async def answer() -> None:
            await gate.release(2)  # the second batch's answer comes first…
            await gate.answered_call(2)
            await asyncio.sleep(0.05)
            assert gate.answered == [2]
            assert received == []  # …and nothing of it went out before batch 1's
            for call in (1, 3, 4):
                await gate.release(call)

        async def consume() -> None:
            async for chunk in stream.filter(chunked(ndjson(rows), 5)):
                received.append(chunk)

        steering = asyncio.ensure_future(answer())
        await asyncio.wait_for(consume(), 30)
        await steering

    asyncio.run(run())
    assert b"".join(received) == ndjson(rows)
    assert gate.started == [1, 2, 3, 4]
    assert gate.most_at_once == 2  # bounded: at most two batches held and asked at once
    assert stream.counters.decisions == {"d1": 3, "d2": 3, "d3": 3, "d4": 3}


def test_a_pipelined_failure_stops_before_its_batch_while_the_one_before_is_awaited() -> None:
    """Batch 2 fails while batch 1 is still awaited: batch 1 goes out whole, nothing of batch 2 or later."""
    gate = SteeredGate(fail_call=2)
    rows = [{"card_id": "card-alice", "n": n} for n in range(9)]
    stream = GatedStream(gate, CONTEXT, media_type=NDJSON, subject_field="card_id", batch_size=3)
    received: list[bytes] = []

    async def run() -> None:
        async def answer_first_after_second_failed() -> None:
            await gate.answered_call(2)
            await gate.release(1)

        async def consume() -> None:
            async for chunk in stream.filter(chunked(ndjson(rows), 4)):
                received.append(chunk)

        steering = asyncio.ensure_future(answer_first_after_second_failed())
        try:
            await asyncio.wait_for(consume(), 30)
        finally:
            steering.cancel()

    with pytest.raises(GateUnavailable, match="ConnectionError"):
        asyncio.run(run())
    assert b"".join(received) == ndjson(rows[:3])
    assert gate.started == [1, 2]  # batch 3 was never asked about
    assert stream.counters.released == 3


def test_a_record_that_is_not_utf8_or_names_its_subject_twice_is_judged_like_json_does() -> None:
    """Bytes that are not UTF-8 anywhere in a record make it no JSON (withheld); a repeated key: the last."""
    data = (
        b'{"card_id": "card-alice", "note": "caf\xe9"}\n'  # Latin-1, not UTF-8, in a field never read
        b'{"card_id": "card-alice", "note": "caf\xc3\xa9"}\n'  # UTF-8: fine
        b'{"card_id": "card-alice", "card_id": "card-bob"}\n'  # the last one counts (as json and orjson)
        b'{"card_id": "card-bob", "card\\u005fid": "card-alice"}\n'  # an escaped key is the same key
    )
    out, stream = run_filter(ListGate({"card-alice"}), data)
    assert (
        out
        == b'{"card_id": "card-alice", "note": "caf\xc3\xa9"}\n{"card_id": "card-bob", "card\\u005fid": "card-alice"}\n'
    )
    assert (stream.counters.released, stream.counters.withheld, stream.counters.without_subject) == (2, 2, 1)
