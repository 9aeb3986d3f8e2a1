"""MQTT sources against the local Mosquitto: live NDJSON until the transfer stops."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any

import aiomqtt
import pytest

from connector.dataplane.sources import SourceConfig, UpstreamError, open_source

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
