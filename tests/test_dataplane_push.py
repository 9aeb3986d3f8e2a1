"""Push into a consumer's sink over real HTTP: complete files only, retries, refusals, no redirects."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.push import PushFailed, PushStopped, PushTarget, RetryPolicy, push, source_stream
from connector.dataplane.sink import (
    clean_partial_uploads,
    create_sink_destination,
    list_sinks,
    read_sink,
    sink_router,
)
from connector.dataplane.sources import SourceConfig
from tests.dataplane_helpers import CONTEXT, ListGate, raw_tcp_server, serving

FAST = RetryPolicy(max_attempts=4, first_delay=0.05, max_delay=0.2, connect_timeout=5, read_timeout=10)


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A consumer's data directory and a real server with the sink route."""
    data_dir = tmp_path / "city"
    data_dir.mkdir()
    app = FastAPI()
    app.include_router(sink_router(data_dir))
    with serving(app) as url:
        yield data_dir, url


@pytest.fixture
def provider_file(tmp_path: Path) -> tuple[SourceConfig, dict[str, Any], bytes]:
    root = tmp_path / "utility"
    root.mkdir()
    data = b"".join(b'{"meter_id": "meter-%d", "kwh": %d}\n' % (n % 3, n) for n in range(50_000))
    (root / "readings.ndjson").write_bytes(data)
    config = SourceConfig(file_roots=(root,), chunk_size=64 * 1024)
    return config, {"type": "File", "path": str(root / "readings.ndjson")}, data


def sink_files(data_dir: Path) -> list[Path]:
    """What the operator sees in the sink: complete files only (no hidden bookkeeping)."""
    return sorted(p for p in (data_dir / "sink").glob("*") if p.is_file())


def partials(data_dir: Path) -> list[Path]:
    return list((data_dir / "sink" / ".partial").glob("*"))


def test_a_pushed_file_arrives_whole_and_the_secret_is_spent(
    consumer: tuple[Path, str], provider_file: Any
) -> None:
    data_dir, url = consumer
    config, address, data = provider_file
    destination = create_sink_destination(data_dir, url, name="transfer-1 readings.ndjson")
    assert destination.secret not in repr(destination)
    target = PushTarget.from_data_address(destination.data_address())
    assert destination.secret not in repr(target)

    result = asyncio.run(
        push(source_stream(address, config), target, media_type="application/x-ndjson", policy=FAST)
    )
    assert (result.bytes_sent, result.attempts, result.status) == (len(data), 1, 200)
    [received] = sink_files(data_dir)
    assert received.name == "transfer-1-readings.ndjson"
    assert received.read_bytes() == data
    record = read_sink(data_dir, destination.sink_id)
    assert record is not None
    assert (record.state, record.received_path, record.received_bytes) == ("received", received, len(data))
    assert record.received_sha256 == hashlib.sha256(data).hexdigest()
    assert record.media_type == "application/x-ndjson"

    with pytest.raises(PushFailed, match=r"refused the data \(409\)") as again:
        asyncio.run(push(source_stream(address, config), target, media_type="text/csv", policy=FAST))
    assert again.value.attempts == 1  # a refusal is final
    assert sink_files(data_dir) == [received]


def test_wrong_secret_unknown_sink_expired_and_oversized_are_refused(
    consumer: tuple[Path, str], provider_file: Any
) -> None:
    data_dir, url = consumer
    config, address, _data = provider_file
    destination = create_sink_destination(data_dir, url, name="x.ndjson")
    stream = source_stream(address, config)

    def attempt(target: PushTarget) -> PushFailed:
        with pytest.raises(PushFailed) as caught:
            asyncio.run(push(stream, target, media_type="application/x-ndjson", policy=FAST))
        return caught.value

    wrong = attempt(PushTarget(destination.endpoint, {"Authorization": "Bearer guessed"}))
    assert "(401)" in wrong.reason
    assert wrong.attempts == 1
    unknown = attempt(PushTarget(f"{url}/sink/{'0' * 32}", {"Authorization": f"Bearer {destination.secret}"}))
    assert "(401)" in unknown.reason
    expired = create_sink_destination(data_dir, url, name="late", lifetime_seconds=-1)
    assert "(410)" in attempt(PushTarget.from_data_address(expired.data_address())).reason
    small = create_sink_destination(data_dir, url, name="small", max_bytes=100_000)
    assert "(413)" in attempt(PushTarget.from_data_address(small.data_address())).reason
    assert sink_files(data_dir) == []
    assert partials(data_dir) == []
    assert read_sink(data_dir, small.sink_id).state == "waiting"  # type: ignore[union-attr]


def test_an_upload_cut_short_leaves_nothing_and_the_sink_stays_open(
    consumer: tuple[Path, str], provider_file: Any
) -> None:
    data_dir, url = consumer
    config, address, data = provider_file
    destination = create_sink_destination(data_dir, url, name="cut.ndjson")
    port = int(url.rsplit(":", 1)[1])
    lock = data_dir / "sink" / ".registrations" / f"{destination.sink_id}.lock"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(
            f"POST /sink/{destination.sink_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {destination.secret}\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + b"only the beginning"
        )
        # Hang up only once the server has taken the upload (it holds the sink's lock while it waits
        # for the rest): hanging up earlier, on a loaded machine, could leave our first look below
        # to see "no lock" before the server had even started.
        for _ in range(300):
            if lock.exists():
                break
            time.sleep(0.1)
        assert lock.exists(), "the server never started taking the upload"
    # the server notices the disconnect and cleans up; poll for it (the machine may be loaded)
    for _ in range(300):
        if not lock.exists() and not partials(data_dir):
            break
        time.sleep(0.1)
    assert sink_files(data_dir) == []
    assert partials(data_dir) == []
    result = asyncio.run(push(source_stream(address, config), PushTarget.from_data_address(destination.data_address()),
                              media_type="application/x-ndjson", policy=FAST))  # fmt: skip
    assert result.attempts == 1
    assert sink_files(data_dir)[0].read_bytes() == data


def test_5xx_and_dropped_connections_are_retried_from_the_start(tmp_path: Path, provider_file: Any) -> None:
    config, address, data = provider_file
    bodies: list[bytes] = []

    async def flaky(request: Request) -> Response:
        body = await request.body()
        bodies.append(body)
        if len(bodies) < 3:
            return JSONResponse({"error": "busy"}, 503)
        return JSONResponse({"ok": True})

    with serving(Starlette(routes=[Route("/in", flaky, methods=["POST"])])) as url:
        result = asyncio.run(
            push(
                source_stream(address, config),
                PushTarget(f"{url}/in"),
                media_type="application/x-ndjson",
                policy=FAST,
            )
        )
    assert result.attempts == 3
    assert bodies == [data, data, data]  # every attempt restarts from the first byte

    with raw_tcp_server(b"") as dropping:
        with pytest.raises(PushFailed, match="gave up after 4 attempts") as caught:
            asyncio.run(
                push(
                    source_stream(address, config),
                    PushTarget(f"{dropping}/in"),
                    media_type="text/plain",
                    policy=FAST,
                )
            )
        assert "could not be reached or dropped the connection" in caught.value.reason


def test_redirects_are_never_followed(provider_file: Any) -> None:
    config, address, _ = provider_file
    hits: list[str] = []

    async def elsewhere(request: Request) -> Response:
        hits.append(request.headers.get("authorization", ""))
        return JSONResponse({"ok": True})

    with serving(Starlette(routes=[Route("/steal", elsewhere, methods=["POST"])])) as other:
        moved = Starlette(
            routes=[Route("/in", lambda r: RedirectResponse(f"{other}/steal", 307), methods=["POST"])]
        )
        with serving(moved) as url:
            target = PushTarget(f"{url}/in", {"Authorization": "Bearer s3cret"})
            with pytest.raises(PushFailed, match="redirects are not followed"):
                asyncio.run(
                    push(source_stream(address, config), target, media_type="text/plain", policy=FAST)
                )
    assert hits == []


def test_stop_during_backoff_ends_the_push(provider_file: Any) -> None:
    config, address, _ = provider_file
    slow = RetryPolicy(max_attempts=10, first_delay=30, max_delay=30, connect_timeout=5, read_timeout=10)

    async def run() -> PushStopped:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        with pytest.raises(PushStopped) as caught:
            await push(
                source_stream(address, config),
                PushTarget("http://127.0.0.1:9/in"),
                media_type="text/plain",
                policy=slow,
                stop=stop,
            )
        return caught.value

    stopped = asyncio.run(asyncio.wait_for(run(), 20))
    assert stopped.attempts == 1


def test_a_personal_dataset_is_pushed_through_the_gate(
    consumer: tuple[Path, str], provider_file: Any
) -> None:
    data_dir, url = consumer
    config, address, _data = provider_file
    destination = create_sink_destination(data_dir, url, name="readings.ndjson")
    filters: list[GatedStream] = []

    def gated() -> AsyncIterator[bytes]:
        stream = GatedStream(
            ListGate({"meter-1"}), CONTEXT, media_type="application/x-ndjson", subject_field="meter_id"
        )
        filters.append(stream)
        return stream.filter(source_stream(address, config)())

    result = asyncio.run(
        push(
            gated,
            PushTarget.from_data_address(destination.data_address()),
            media_type="application/x-ndjson",
            policy=FAST,
        )
    )
    received = sink_files(data_dir)[0].read_bytes()
    assert result.bytes_sent == len(received)
    rows = [json.loads(line) for line in received.splitlines()]
    assert {r["meter_id"] for r in rows} == {"meter-1"}
    assert len(rows) == sum(1 for n in range(50_000) if n % 3 == 1)
    assert filters[0].counters.released == len(rows)


def test_push_targets_must_be_http_without_credentials_in_the_url() -> None:
    for endpoint in ("ftp://x/in", "file:///etc/passwd", "http://user:pw@127.0.0.1/in", "not a url"):
        with pytest.raises(ValueError, match="push endpoint"):
            PushTarget(endpoint)
    with pytest.raises(ValueError, match="baseUrl"):
        PushTarget.from_data_address({"type": "HttpData"})
    assert (
        httpx.URL(
            PushTarget.from_data_address({"type": "HttpData", "baseUrl": "http://h/a", "path": "b"}).endpoint
        ).path
        == "/a/b"
    )


def test_a_gate_failure_mid_push_leaves_nothing_at_the_consumer(
    consumer: tuple[Path, str], provider_file: Any
) -> None:
    data_dir, url = consumer
    config, address, _ = provider_file
    destination = create_sink_destination(data_dir, url, name="readings.ndjson")
    calls = 0

    class FailsLater(ListGate):
        async def decide(self, subjects: Any, context: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 5:
                raise ConnectionError("consent service went away")
            return await super().decide(subjects, context)

    def gated() -> AsyncIterator[bytes]:
        stream = GatedStream(
            FailsLater({"meter-1"}), CONTEXT, media_type="application/x-ndjson", subject_field="meter_id"
        )
        return stream.filter(source_stream(address, config)())

    with pytest.raises(PushFailed, match="the personal-data gate failed") as caught:
        asyncio.run(
            push(
                gated,
                PushTarget.from_data_address(destination.data_address()),
                media_type="application/x-ndjson",
                policy=FAST,
            )
        )
    assert caught.value.attempts == 1  # a gate failure is never retried
    assert caught.value.bytes_sent > 0  # some records had left before the gate failed…
    for _ in range(
        300
    ):  # …and the sink dropped them (poll: the server sees the cut connection a little later)
        if (
            not partials(data_dir)
            and not (data_dir / "sink" / ".registrations" / f"{destination.sink_id}.lock").exists()
        ):
            break
        asyncio.run(asyncio.sleep(0.1))
    assert sink_files(data_dir) == []
    assert partials(data_dir) == []
    assert read_sink(data_dir, destination.sink_id).state == "waiting"  # type: ignore[union-attr]


def test_sinks_are_listed_and_crash_leftovers_cleaned(tmp_path: Path) -> None:
    data_dir = tmp_path / "city"
    first = create_sink_destination(data_dir, "http://city.example", name="a.csv", lifetime_seconds=10)
    second = create_sink_destination(data_dir, "http://city.example", name="b.csv", lifetime_seconds=100)
    assert [s.sink_id for s in list_sinks(data_dir)] == [second.sink_id, first.sink_id]
    assert all(s.state == "waiting" for s in list_sinks(data_dir))
    leftovers = data_dir / "sink" / ".partial"
    leftovers.mkdir(parents=True)
    old = leftovers / "x.part"
    old.write_bytes(b"half")
    os.utime(old, (0, 0))
    lock = data_dir / "sink" / ".registrations" / f"{first.sink_id}.lock"
    lock.touch()
    os.utime(lock, (0, 0))
    fresh = leftovers / "y.part"
    fresh.write_bytes(b"in progress")
    assert clean_partial_uploads(data_dir) == 2
    assert [p.name for p in leftovers.iterdir()] == ["y.part"]  # an upload still running is left alone
    assert not lock.exists()
