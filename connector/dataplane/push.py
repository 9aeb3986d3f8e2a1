"""Push: the provider streams a transfer's bytes into an HTTP endpoint the consumer named.

Each attempt sends the whole stream as one chunked request (``POST`` by default) with the
header the consumer gave (``authKey``/``authCode`` of its data destination). Connection
errors, 5xx, 408 and 429 are retried with exponential backoff (bounded attempts); every
attempt restarts from the first byte, so the receiver must treat each request as a new,
complete upload (Tessera's sink keeps nothing of a failed one). Any other 4xx is final.
Redirects are never followed: a 3xx is a failure, so an endpoint cannot bounce the data
(or the consumer's credentials) to another host.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from connector.dataplane.gate import GateFailure
from connector.dataplane.sources import ConsumerRequest, SourceConfig, SourceError, open_source
from connector.dataplane.sources.address import plain_address, text_field
from connector.dataplane.sources.base import Stopper, StopSignal

StreamFactory = Callable[[], AsyncIterator[bytes]]
RETRIED_STATUSES = frozenset({408, 429})


class PushFailed(Exception):
    """The push did not complete; ``reason`` is safe to put in the transfer's termination."""

    def __init__(self, reason: str, attempts: int, bytes_sent: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.bytes_sent = bytes_sent


class PushStopped(PushFailed):
    """The stop signal fired (suspension or termination) before the push completed."""


@dataclass(frozen=True)
class PushTarget:
    """Where to push: an http(s) endpoint and the headers that authenticate there (kept out of repr)."""

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    method: str = "POST"

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a push endpoint must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("a push endpoint must not carry credentials in its URL")
        if self.method not in ("POST", "PUT"):
            raise ValueError("a push is sent with POST or PUT")

    @classmethod
    def from_data_address(cls, destination: Mapping[str, Any]) -> PushTarget:
        """The consumer's ``dataDestination`` (EDC HttpData: ``baseUrl``, ``path``, ``authKey``, ``authCode``, ``method``)."""
        plain = plain_address(destination)
        base = text_field(plain, "baseUrl") or text_field(plain, "endpoint")
        if base is None:
            raise ValueError("the data destination needs baseUrl")
        path = text_field(plain, "path")
        endpoint = base.rstrip("/") + "/" + path.lstrip("/") if path else base
        headers: dict[str, str] = {}
        code = text_field(plain, "authCode") or text_field(plain, "authorization")
        if code is not None:
            headers[text_field(plain, "authKey") or "Authorization"] = code
        return cls(endpoint, headers, (text_field(plain, "method") or "POST").upper())


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # waiting for the endpoint's answer and for each write

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``: doubling, capped, with ±20 % jitter."""
        base = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return float(base * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not security


@dataclass(frozen=True)
class PushResult:
    bytes_sent: int
    attempts: int
    status: int  # the endpoint's final answer


def source_stream(
    address: Mapping[str, Any],
    config: SourceConfig,
    request: ConsumerRequest | None = None,
    stop: StopSignal | None = None,
) -> StreamFactory:
    """A factory of fresh byte streams of an asset's source (each push attempt opens it anew)."""

    async def stream() -> AsyncIterator[bytes]:
        source = await open_source(address, config, request, stop)
        try:
            async for chunk in source.chunks():
                yield chunk
        finally:
            await source.aclose()

    return stream


async def push(
    stream: StreamFactory,
    target: PushTarget,
    *,
    media_type: str,
    policy: RetryPolicy = RetryPolicy(),
    stop: StopSignal | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> PushResult:
    """Send ``stream()`` to ``target``, retrying as the policy allows; raises ``PushFailed``."""
    stopper = Stopper(stop)
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    headers = {**(extra_headers or {}), **target.headers, "Content-Type": media_type}
    attempt = 0
    sent = 0
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        while True:
            attempt += 1
            if stopper.is_set():
                raise PushStopped("the transfer was stopped before the push completed", attempt - 1, sent)
            counter = _Counter()
            try:
                response = await client.request(
                    target.method, target.endpoint, content=counter.wrap(stream()), headers=headers
                )
            except httpx.TransportError as exc:
                sent = counter.bytes
                reason = (
                    f"the push endpoint could not be reached or dropped the connection ({type(exc).__name__})"
                )
            except (SourceError, GateFailure) as exc:
                sent = counter.bytes
                retry = isinstance(exc, SourceError) and exc.status >= 502
                if not retry or attempt >= policy.max_attempts:
                    raise PushFailed(f"the source failed: {exc}", attempt, sent) from None
                reason = f"the source failed: {exc}"
            else:
                sent = counter.bytes
                status = response.status_code
                if status < 300:
                    return PushResult(sent, attempt, status)
                if 300 <= status < 400:
                    raise PushFailed(
                        f"the push endpoint redirected ({status}); redirects are not followed", attempt, sent
                    )
                if status < 500 and status not in RETRIED_STATUSES:
                    raise PushFailed(f"the push endpoint refused the data ({status})", attempt, sent)
                reason = f"the push endpoint answered {status}"
            if attempt >= policy.max_attempts:
                raise PushFailed(f"{reason}; gave up after {attempt} attempts", attempt, sent)
            if await _stopped_within(stopper, policy.delay(attempt)):
                raise PushStopped("the transfer was stopped before the push completed", attempt, sent)


class _Counter:
    def __init__(self) -> None:
        self.bytes = 0

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                self.bytes += len(chunk)
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()


async def _stopped_within(stopper: Stopper, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stopper.wait(), seconds)
    except TimeoutError:
        return False
    return True
