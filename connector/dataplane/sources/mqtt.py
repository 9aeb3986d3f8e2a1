"""MQTT sources: a live subscription to a topic on a broker, written as NDJSON until stopped.

Address fields: ``broker`` (``host``, ``host:port`` or ``mqtt://host:port``; ``port``
separately also works), ``topic`` (wildcards allowed), optionally ``qos`` (0, 1 or 2) and
credentials ``username`` with ``password`` or ``secretName`` (kept on the provider).

The subscription is made when the source is opened, so no message published after the
transfer started is missed and an unreachable broker is a clear 502 before the response
begins. Each message becomes one line: a JSON object payload as it is, anything else
wrapped as ``{"topic": ..., "payload": <JSON value or text>}`` (``payloadBase64`` for bytes
that are not UTF-8). The stream ends when the stop signal fires (suspension, completion,
termination) or the consumer goes away, and the broker connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson

from connector.dataplane.sources.address import text_field
from connector.dataplane.sources.base import (
    AddressError,
    RangeNotSupported,
    Source,
    SourceConfig,
    Stopper,
    StopSignal,
    UpstreamError,
    UpstreamTimeout,
)
from connector.dataplane.sources.ranges import ByteRange

NDJSON = "application/x-ndjson"


def broker_of(address: Mapping[str, Any]) -> tuple[str, int]:
    raw = text_field(address, "broker") or text_field(address, "host")
    if raw is None:
        raise AddressError("an Mqtt data address needs broker (host:port)")
    parts = urlsplit(raw if "://" in raw else f"mqtt://{raw}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise AddressError("broker must be host:port or mqtt://host:port")
    try:
        port = int(text_field(address, "port") or parts.port or 1883)
    except ValueError:
        raise AddressError("the broker port is not a number") from None
    if not 1 <= port <= 65535:
        raise AddressError("the broker port is out of range")
    return parts.hostname, port


def message_line(topic: str, payload: bytes) -> bytes:
    """One NDJSON line for one message."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        value = None
        try:
            text: Any = payload.decode("utf-8")
            return orjson.dumps({"topic": topic, "payload": text}) + b"\n"
        except UnicodeDecodeError:
            encoded = base64.b64encode(payload).decode()
            return orjson.dumps({"topic": topic, "payloadBase64": encoded}) + b"\n"
    if isinstance(value, dict):
        return orjson.dumps(value) + b"\n"
    return orjson.dumps({"topic": topic, "payload": value}) + b"\n"


class MqttSource(Source):
    media_type = NDJSON
    live = True

    def __init__(self, client: aiomqtt.Client, stopper: Stopper) -> None:
        self._client = client
        self._stopper = stopper
        self._open = True

    async def chunks(self, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        if byte_range is not None:
            raise RangeNotSupported("an MQTT source serves no byte ranges")
        messages = aiter(self._client.messages)
        stopped = asyncio.ensure_future(self._stopper.wait())
        received: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while not stopped.done():
                received = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({received, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if received not in done:
                    break
                try:
                    message = received.result()
                except aiomqtt.MqttError:
                    raise UpstreamError("the connection to the MQTT broker was lost") from None
                except StopAsyncIteration:
                    break
                payload = message.payload
                data = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
                yield message_line(str(message.topic), bytes(data))
        finally:  # stopped, failed, or cancelled because the consumer went away
            for waiting in (received, stopped):
                if waiting is not None and not waiting.done():
                    waiting.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, aiomqtt.MqttError):
                        await waiting
            await self.aclose()

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(aiomqtt.MqttError, RuntimeError):
                await self._client.__aexit__(None, None, None)


async def open_mqtt_source(
    address: Mapping[str, Any], config: SourceConfig, stop: StopSignal | None
) -> MqttSource:
    host, port = broker_of(address)
    topic = text_field(address, "topic")
    if topic is None or len(topic) > 1024 or "\x00" in topic:
        raise AddressError("an Mqtt data address needs a topic")
    qos_text = text_field(address, "qos") or "0"
    if qos_text not in ("0", "1", "2"):
        raise AddressError("qos must be 0, 1 or 2")
    password = text_field(address, "password")
    secret_name = text_field(address, "secretName")
    if password is None and secret_name is not None:
        password = config.secrets(secret_name)
        if password is None:
            raise AddressError("the secret the data address names is not available on this connector")
    client = aiomqtt.Client(
        host,
        port,
        username=text_field(address, "username"),
        password=password,
        identifier=f"tessera-{uuid.uuid4().hex[:20]}",
        timeout=config.connect_timeout,
        clean_session=True,
    )
    try:
        await asyncio.wait_for(client.__aenter__(), config.connect_timeout)
    except TimeoutError:
        raise UpstreamTimeout("the MQTT broker did not answer in time") from None
    except aiomqtt.MqttError as exc:
        code = getattr(exc, "rc", None)
        refused = "refused the connection" if code is not None else "cannot be reached"
        raise UpstreamError(f"the MQTT broker {refused}") from None
    source = MqttSource(client, Stopper(stop, config.stop_poll_seconds))
    try:
        await asyncio.wait_for(client.subscribe(topic, qos=int(qos_text)), config.connect_timeout)
    except (TimeoutError, aiomqtt.MqttError, ValueError):
        await source.aclose()
        raise UpstreamError("the MQTT broker refused the subscription") from None
    return source
