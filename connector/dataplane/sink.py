"""The push sink: where a consumer connector receives pushed data for its operator.

Before asking for a push, the consumer's control plane calls ``create_sink_destination``:
it registers a sink (an unguessable id, a one-time secret stored only as its SHA-256, an
expiry and a size limit) and returns the data destination to put in the TransferRequest.
The provider then sends ``POST {public_url}/sink/{sink_id}`` with
``Authorization: Bearer <secret>``; ``sink_router`` receives it.

The body is written to ``<data_dir>/sink/.partial/`` and renamed into
``<data_dir>/sink/<name>`` only once it is complete: a failed, cut or oversized upload
leaves nothing behind, and the sink stays open for the provider's retry (each attempt
restarts from the first byte). One upload at a time; after a complete one the secret is
spent. Registrations live in ``<data_dir>/sink/.registrations/`` as JSON files, so they
survive a restart and need no database table.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

SINK_PATH = "/sink"
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_LIFETIME_SECONDS = 7 * 24 * 3600
WRITE_BYTES = 1024 * 1024
LOCK_TOUCH_SECONDS = 5.0
STALE_LOCK_SECONDS = 120.0
_SINK_ID = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SinkDestination:
    """What the consumer sends as its push data destination (keep ``secret`` out of logs)."""

    sink_id: str
    endpoint: str
    secret: str

    def data_address(self) -> dict[str, str]:
        """EDC HttpData data destination with bare keys (the provider's ``PushTarget.from_data_address`` reads it)."""
        return {
            "type": "HttpData",
            "baseUrl": self.endpoint,
            "authKey": "Authorization",
            "authCode": f"Bearer {self.secret}",
        }

    def __repr__(self) -> str:
        return f"SinkDestination(sink_id={self.sink_id!r}, endpoint={self.endpoint!r})"


@dataclass(frozen=True)
class SinkRecord:
    """A sink's registration and, once received, what arrived."""

    sink_id: str
    name: str
    state: str  # "waiting" or "received"
    max_bytes: int
    expires_at: float
    received_path: Path | None = None
    received_bytes: int | None = None
    received_sha256: str | None = None
    media_type: str | None = None


def sink_dir(data_dir: Path) -> Path:
    return data_dir / "sink"


def _registrations(data_dir: Path) -> Path:
    return sink_dir(data_dir) / ".registrations"


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE_NAME.sub("-", name).strip(".-")[:120]
    return cleaned or "pushed-data"


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    os.replace(temporary, path)


def create_sink_destination(
    data_dir: Path,
    public_url: str,
    *,
    name: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
) -> SinkDestination:
    """Register a sink for one push; ``name`` becomes the received file's name (sanitised)."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    sink_id = secrets.token_hex(16)
    secret = secrets.token_urlsafe(32)
    registrations = _registrations(data_dir)
    registrations.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(
        registrations / f"{sink_id}.json",
        {
            "name": _safe_name(name),
            "secretSha256": hashlib.sha256(secret.encode()).hexdigest(),
            "maxBytes": max_bytes,
            "expiresAt": time.time() + lifetime_seconds,
            "state": "waiting",
        },
    )
    return SinkDestination(sink_id, f"{public_url.rstrip('/')}{SINK_PATH}/{sink_id}", secret)


def _load(data_dir: Path, sink_id: str) -> dict[str, Any] | None:
    if not _SINK_ID.fullmatch(sink_id):
        return None
    try:
        loaded: dict[str, Any] = json.loads(
            (_registrations(data_dir) / f"{sink_id}.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return None
    return loaded


def read_sink(data_dir: Path, sink_id: str) -> SinkRecord | None:
    """The sink's state (None if unknown): the control plane reads what arrived."""
    found = _load(data_dir, sink_id)
    if found is None:
        return None
    received = found.get("receivedPath")
    return SinkRecord(
        sink_id=sink_id,
        name=found["name"],
        state=found["state"],
        max_bytes=found["maxBytes"],
        expires_at=found["expiresAt"],
        received_path=Path(received) if received else None,
        received_bytes=found.get("receivedBytes"),
        received_sha256=found.get("receivedSha256"),
        media_type=found.get("mediaType"),
    )


def list_sinks(data_dir: Path) -> list[SinkRecord]:
    """Every registered sink, newest expiry first (for the operator's pages)."""
    found = []
    for path in _registrations(data_dir).glob("*.json"):
        record = read_sink(data_dir, path.stem)
        if record is not None:
            found.append(record)
    return sorted(found, key=lambda r: r.expires_at, reverse=True)


def clean_partial_uploads(data_dir: Path, older_than_seconds: float = STALE_LOCK_SECONDS) -> int:
    """Remove what uploads cut by a crash left behind (call at start-up); returns how many files went."""
    removed = 0
    cutoff = time.time() - older_than_seconds
    for directory, pattern in (
        (sink_dir(data_dir) / ".partial", "*.part"),
        (_registrations(data_dir), "*.lock"),
    ):
        for path in directory.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
    return removed


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _place(partial: Path, directory: Path, name: str) -> Path:
    """Link the complete file under a free name (never overwriting an earlier push), then drop the partial."""
    stem, dot, suffix = name.partition(".")
    for n in range(10_000):
        candidate = directory / (name if n == 0 else f"{stem}-{n}{dot}{suffix}")
        try:
            os.link(partial, candidate)
        except FileExistsError:
            continue
        partial.unlink()
        return candidate
    raise OSError("no free file name in the sink directory")


async def receive(data_dir: Path, sink_id: str, request: Request) -> Response:
    """One upload into a sink (the route's body; see the module docstring)."""
    found = _load(data_dir, sink_id)
    token = _bearer(request)
    if (
        found is None
        or token is None
        or not hmac.compare_digest(
            hashlib.sha256(token.encode()).hexdigest(), str(found.get("secretSha256", ""))
        )
    ):
        return _error(401, "unknown sink or wrong secret")
    if found["state"] != "waiting":
        return _error(409, "this sink has already received its data")
    if time.time() > found["expiresAt"]:
        return _error(410, "this sink has expired")
    max_bytes = int(found["maxBytes"])
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return _error(413, f"the data is larger than this sink accepts ({max_bytes} bytes)")
    registrations = _registrations(data_dir)
    lock = registrations / f"{sink_id}.lock"
    if not _take_lock(lock):
        return _error(409, "another upload into this sink is in progress")
    found = _load(data_dir, sink_id)  # read again under the lock: an upload may have just completed
    if found is None or found["state"] != "waiting":
        lock.unlink(missing_ok=True)
        return _error(409, "this sink has already received its data")
    partial_dir = sink_dir(data_dir) / ".partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / f"{sink_id}-{secrets.token_hex(4)}.part"
    handle: BinaryIO = await anyio.to_thread.run_sync(partial.open, "wb")
    digest = hashlib.sha256()
    size = 0
    complete = False
    touched = time.monotonic()
    try:
        try:
            pending = bytearray()  # written in 1 MiB pieces: one worker-thread hop per MiB, not per packet
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    return _error(413, f"the data is larger than this sink accepts ({max_bytes} bytes)")
                digest.update(chunk)
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    await anyio.to_thread.run_sync(handle.write, bytes(pending))
                    pending.clear()
                if time.monotonic() > touched + LOCK_TOUCH_SECONDS:
                    touched = time.monotonic()
                    os.utime(lock)  # the upload is alive: the lock is not stale
        except ClientDisconnect:
            return _error(400, "the upload was cut short")
        await anyio.to_thread.run_sync(handle.write, bytes(pending))
        await anyio.to_thread.run_sync(_flush, handle)
        handle.close()
        final = await anyio.to_thread.run_sync(_place, partial, sink_dir(data_dir), found["name"])
        media_type = request.headers.get("content-type", "application/octet-stream")[:200]
        _write_json_atomically(
            registrations / f"{sink_id}.json",
            {**found, "state": "received", "receivedPath": str(final), "receivedBytes": size,
             "receivedSha256": digest.hexdigest(), "mediaType": media_type, "receivedAt": time.time()},
        )  # fmt: skip
        complete = True
        return JSONResponse({"received": size, "sha256": digest.hexdigest()})
    finally:
        handle.close()
        if not complete:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> bool:
    """One upload at a time; a lock left by a crashed upload (not touched for a while) is taken over."""
    for _ in range(2):
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < STALE_LOCK_SECONDS:
                    return False
            except FileNotFoundError:
                continue
            lock.unlink(missing_ok=True)
    return False


def _flush(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def sink_router(data_dir: Path) -> APIRouter:
    """The receiving route, ``POST``/``PUT`` ``/sink/{sink_id}`` (authenticated by the sink's secret)."""
    router = APIRouter()

    @router.api_route(SINK_PATH + "/{sink_id}", methods=["POST", "PUT"], include_in_schema=False)
    async def push_into_sink(sink_id: str, request: Request) -> Response:
        return await receive(data_dir, sink_id, request)

    return router
