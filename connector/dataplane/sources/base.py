"""What every source is: a media type, maybe a size, and an async stream of byte chunks.

Errors carry the HTTP status the public data endpoint should answer with and a message
that is safe to show the consumer (never an upstream credential, never a local path).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.dataplane.sources.ranges import ByteRange
from runtime.settings import DATABASE_FILE

# What a participant directory holds for the connector itself, relative to it: never a data source.
CONNECTOR_FILES = (
    "keys",
    "secrets",
    "management-api-key",
    "tessera.toml",
    "sink/.registrations",
    "sink/.partial",
)

StopSignal = asyncio.Event | Callable[[], bool]
SecretResolver = Callable[[str], str | None]
DEFAULT_CHUNK_SIZE = (
    1024 * 1024
)  # one worker-thread hop per MiB: smaller chunks cost throughput on a busy machine
_SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SourceError(Exception):
    """The source cannot deliver; ``status`` is what a pull answers, ``str(self)`` says why."""

    status: int = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class AddressError(SourceError):
    """The asset's data address is unusable (the provider operator's configuration)."""

    status = 500


class ConsumerRequestRefused(SourceError):
    """The consumer asked for something the data address does not allow (e.g. a proxy path)."""

    status = 400


class SourceNotFound(SourceError):
    status = 404


class UpstreamError(SourceError):
    """The upstream failed: unreachable, an error status, or an answer that is not what it should be."""

    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class RangeNotSupported(SourceError):
    """Ranges were asked of a source that has none; callers check ``supports_ranges`` first."""

    status = 500


def no_secrets(name: str) -> str | None:
    return None


def secret_file_resolver(directory: Path) -> SecretResolver:
    """Secrets named by a data address's ``secretName``, read from ``<directory>/<name>``."""

    def resolve(name: str) -> str | None:
        if not _SECRET_NAME.fullmatch(name):
            return None
        try:
            return (directory / name).read_text(encoding="utf-8").strip()
        except OSError:
            return None

    return resolve


@dataclass(frozen=True)
class SourceConfig:
    """The provider's settings for opening sources (the control plane builds one per connector)."""

    file_roots: tuple[Path, ...]
    file_denied: tuple[Path, ...] = ()  # never served, even inside a root (the connector's own files)
    secrets: SecretResolver = no_secrets
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_proxy_body_bytes: int = 10 * 1024 * 1024
    sensorthings_page_size: int = 1000
    max_sensorthings_pages: int = 100_000
    max_page_bytes: int = 64 * 1024 * 1024
    stop_poll_seconds: float = 0.2

    @classmethod
    def for_data_dir(cls, data_dir: Path, **overrides: Any) -> SourceConfig:
        """Files only under ``data_dir``, never the connector's own (keys, secrets, settings, database,
        sink bookkeeping); ``secretName`` resolved from ``<data_dir>/secrets/``."""
        own = (
            *CONNECTOR_FILES,
            DATABASE_FILE,
            f"{DATABASE_FILE}-wal",
            f"{DATABASE_FILE}-shm",
            f"{DATABASE_FILE}-journal",
        )
        options: dict[str, Any] = {
            "file_roots": (data_dir,),
            "file_denied": tuple(data_dir / name for name in own),
            "secrets": secret_file_resolver(data_dir / "secrets"),
        }
        return cls(**{**options, **overrides})


@dataclass(frozen=True)
class ConsumerRequest:
    """What the consumer's pull adds to an HttpData upstream request (each needs its proxy flag)."""

    method: str = "GET"
    path: str = ""
    query: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    content_type: str | None = None


class Stopper:
    """Waits for a stop signal: an ``asyncio.Event`` (at once) or a callable (polled)."""

    def __init__(self, signal: StopSignal | None, poll_seconds: float = 0.2) -> None:
        self._signal = signal
        self._poll = poll_seconds

    def is_set(self) -> bool:
        if self._signal is None:
            return False
        if isinstance(self._signal, asyncio.Event):
            return self._signal.is_set()
        return bool(self._signal())

    async def wait(self) -> None:
        if self._signal is None:
            await asyncio.Event().wait()  # never
        elif isinstance(self._signal, asyncio.Event):
            await self._signal.wait()
        else:
            while not self._signal():  # noqa: ASYNC110 - a callable can only be polled
                await asyncio.sleep(self._poll)


class Source(ABC):
    """An opened source. Iterate ``chunks()`` once, then ``aclose()`` (or use ``async with``)."""

    media_type: str
    size: int | None = None  # total bytes, when known before streaming
    supports_ranges: bool = False
    live: bool = False  # streams until stopped (MQTT), no natural end

    @abstractmethod
    def chunks(self, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """The bytes, in chunks; ``byte_range`` only where ``supports_ranges``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing open
        """Release what the source holds open (connections, subscriptions); idempotent."""

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def flag(value: Any) -> bool:
    """EDC writes proxy flags as the strings "true"/"false"; booleans are accepted too."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"
