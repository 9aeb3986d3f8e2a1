"""MQTT sources against the local Mosquitto: live NDJSON until the transfer stops."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fastapi import FastAPI

from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.push import PushTarget, push
from connector.dataplane.sink import create_sink_destination, sink_router
from connector.dataplane.sources import SourceConfig, UpstreamError, open_source
from tests.dataplane_helpers import CONTEXT, ListGate, serving

BROKER = ("127.0.0.1", 1883)
CONFIG = SourceConfig(file_roots=(), connect_timeout=5, stop_poll_seconds=0.05)


def _broker_up() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=2):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _broker_up(), reason="no MQTT broker at 127.0.0.1:1883")


async def publish(topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client(*BROKER) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


def test_messages_stream_as_ndjson_until_the_stop_event() -> None:
    topic = f"tessera-test/{uuid.uuid4().hex}/sensors"

    async def run() -> tuple[list[dict[str, Any]], float]:
        stop = asyncio.Event()
        source = await open_source(
            {"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": f"{topic}/#"}, CONFIG, stop=stop
        )
        assert source.live
        assert source.media_type == "application/x-ndjson"
        lines: list[dict[str, Any]] = []
        # published after the source opened: the subscription is already there, nothing is missed
        await publish(f"{topic}/a1", b'{"sensor": "A1", "count": 12}', b"17", b"plain text", b"\xff\xfe")
        chunks = source.chunks()
        async for chunk in chunks:
            assert chunk.endswith(b"\n")
            assert chunk.count(b"\n") == 1
            lines.append(json.loads(chunk))
            if len(lines) == 4:
                break
        # the stream goes on until stopped: stopping ends it promptly
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(anext(chunks))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        stopped_at = loop.time()
        stop.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 30)
        return lines, loop.time() - stopped_at

    lines, took = asyncio.run(run())
    assert lines == [
        {"sensor": "A1", "count": 12},
        {"topic": f"{topic}/a1", "payload": 17},
        {"topic": f"{topic}/a1", "payload": "plain text"},
        {"topic": f"{topic}/a1", "payloadBase64": "//4="},
    ]
    assert took < 5  # promptly (well under a second when the machine is idle)


def test_a_callable_stop_signal_ends_the_stream() -> None:
    topic = f"tessera-test/{uuid.uuid4().hex}"
    stopping = False

    async def run() -> list[bytes]:
        nonlocal stopping
        source = await open_source(
            {"type": "Mqtt", "broker": "mqtt://127.0.0.1", "topic": topic}, CONFIG, stop=lambda: stopping
        )
        got: list[bytes] = []
        await publish(topic, b'{"n": 1}')
        async for chunk in source.chunks():
            got.append(chunk)
            stopping = True
        await source.aclose()  # already closed by the stream's end: a second close is harmless
        return got

    assert asyncio.run(run()) == [b'{"n":1}\n']


def test_an_unreachable_broker_is_a_clear_error() -> None:
    async def run() -> None:
        await open_source({"type": "Mqtt", "broker": "127.0.0.1:9", "topic": "x"}, CONFIG)

    with pytest.raises(UpstreamError, match="MQTT broker cannot be reached"):
        asyncio.run(run())


def test_a_live_personal_stream_releases_admitted_subjects_within_the_flush_bound() -> None:
    """Live personal data: each message passes the gate within ``flush_after``, not after 1,000 messages."""
    topic = f"tessera-test/{uuid.uuid4().hex}/meters"
    gate = ListGate({"meter-alice"})

    async def run() -> tuple[list[dict[str, Any]], GatedStream]:
        stop = asyncio.Event()
        source = await open_source({"type": "Mqtt", "broker": "127.0.0.1", "topic": topic}, CONFIG, stop=stop)
        stream = GatedStream(
            gate, CONTEXT, media_type=source.media_type, subject_field="meter_id", flush_after=0.2
        )
        out = stream.filter(source.chunks())
        await publish(
            topic,
            b'{"meter_id": "meter-bob", "kwh": 1}',
            b'{"meter_id": "meter-alice", "kwh": 2}',
            b'{"kwh": 3}',
        )
        first = await asyncio.wait_for(anext(out), 30)
        stop.set()
        rest = [chunk async for chunk in out]
        return [json.loads(line) for line in (first + b"".join(rest)).splitlines()], stream

    released, stream = asyncio.run(run())
    assert released == [{"meter_id": "meter-alice", "kwh": 2}]
    assert (stream.counters.released, stream.counters.withheld, stream.counters.without_subject) == (1, 2, 1)


def test_a_live_topic_pushed_into_a_sink_arrives_as_one_complete_file(tmp_path: Path) -> None:
    topic = f"tessera-test/{uuid.uuid4().hex}/live"
    data_dir = tmp_path / "city"
    data_dir.mkdir()
    app = FastAPI()
    app.include_router(sink_router(data_dir))

    async def run(url: str) -> int:
        stop = asyncio.Event()
        destination = create_sink_destination(data_dir, url, name="live.ndjson")
        target = PushTarget.from_data_address(destination.data_address())
        address = {"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": topic}
        subscribed, all_sent = asyncio.Event(), asyncio.Event()

        async def stream() -> AsyncIterator[bytes]:
            source = await open_source(address, CONFIG, stop=stop)
            subscribed.set()
            sent = 0
            async for chunk in source.chunks():
                yield chunk
                sent += 1
                if sent == 3:
                    all_sent.set()

        pushing = asyncio.ensure_future(push(stream, target, media_type="application/x-ndjson", stop=stop))
        await asyncio.wait_for(subscribed.wait(), 30)
        for n in range(3):
            await publish(topic, b'{"n": %d}' % n)
        await asyncio.wait_for(all_sent.wait(), 30)
        stop.set()  # completion: the live stream ends, the upload completes
        result = await asyncio.wait_for(pushing, 30)
        return result.bytes_sent

    with serving(app) as url:
        sent = asyncio.run(run(url))
    [received] = [p for p in (data_dir / "sink").glob("*") if p.is_file()]
    assert received.read_bytes() == b'{"n":0}\n{"n":1}\n{"n":2}\n'
    assert sent == len(received.read_bytes())
