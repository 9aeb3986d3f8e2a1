"""File sources: CSV, JSON and NDJSON files under the operator's configured roots.

The path is resolved (symbolic links followed) and must lie inside one of
``SourceConfig.file_roots``: a data address cannot reach ``/etc/passwd`` through ``..`` or a
link. Bytes are read in fixed-size chunks in a worker thread, so memory stays flat whatever
the file's size, and the event loop never blocks on the disk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread

from connector.dataplane.sources.address import text_field
from connector.dataplane.sources.base import (
    AddressError,
    Source,
    SourceConfig,
    SourceError,
    SourceNotFound,
)
from connector.dataplane.sources.ranges import ByteRange

MEDIA_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
}


def resolve_under_roots(raw: str, roots: tuple[Path, ...], denied: tuple[Path, ...] = ()) -> Path:
    """The real path of ``raw`` if it lies inside a root (relative paths: inside the first root)
    and not inside a denied path."""
    if not roots:
        raise AddressError("file sources are disabled: no data directory is configured")
    if "\x00" in raw:
        raise AddressError("the asset's file path is not a valid path")
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceNotFound("the asset's file does not exist") from None
    except (OSError, RuntimeError):
        raise AddressError("the asset's file path cannot be resolved") from None
    for path in denied:
        if real.is_relative_to(path.resolve()):
            raise AddressError("the asset's file is one of the connector's own files, which are never served")
    for root in roots:
        if real.is_relative_to(root.resolve()):
            return real
    raise AddressError("the asset's file lies outside the connector's data directories")


class FileSource(Source):
    supports_ranges = True

    def __init__(self, path: Path, media_type: str, size: int, chunk_size: int) -> None:
        self.path = path
        self.media_type = media_type
        self.size = size
        self._chunk_size = chunk_size

    async def chunks(self, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        assert self.size is not None
        start, remaining = (0, self.size) if byte_range is None else (byte_range.start, byte_range.length)
        if byte_range is not None and byte_range.end >= self.size:
            raise SourceError("range beyond the end of the file", 416)
        handle: BinaryIO = await anyio.to_thread.run_sync(self._open, start)
        try:
            while remaining > 0:
                data = await anyio.to_thread.run_sync(handle.read, min(self._chunk_size, remaining))
                if not data:
                    # The file shrank while it was sent: fail rather than hand over less than announced.
                    raise SourceError("the file changed while it was being sent")
                remaining -= len(data)
                yield data
        finally:
            handle.close()

    def _open(self, start: int) -> BinaryIO:
        handle = self.path.open("rb", buffering=0)
        if start:
            handle.seek(start)
        return handle


def open_file_source(address: Mapping[str, Any], config: SourceConfig) -> FileSource:
    raw = text_field(address, "path")
    if raw is None:
        raise AddressError("a File data address needs 'path'")
    path = resolve_under_roots(raw, config.file_roots, config.file_denied)
    try:
        stat = path.stat()
    except OSError:
        raise SourceNotFound("the asset's file cannot be read") from None
    if not path.is_file():
        raise AddressError("the asset's file path is not a regular file")
    if not os.access(path, os.R_OK):
        raise AddressError("the asset's file is not readable by the connector")
    media_type = text_field(address, "mediaType") or MEDIA_TYPES.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return FileSource(path, media_type, stat.st_size, config.chunk_size)
