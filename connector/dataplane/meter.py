"""Measuring a payload as it streams: bytes, SHA-256 and records, for the transfer log.

Records are counted for line-framed data without parsing it: NDJSON lines, CSV lines after the header (a quoted field spanning lines counts twice: the count
is for the log, the bytes and hash are exact). Other media types count 0 records unless
the personal-data gate ran, whose count of released records is then used.
"""

from __future__ import annotations

import hashlib

from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.records import CSV_TYPES, NDJSON_TYPES, base_media_type


class PayloadMeter:
    def __init__(self, media_type: str) -> None:
        kind = base_media_type(media_type)
        self._lines = kind in NDJSON_TYPES or kind in CSV_TYPES
        self._header_lines = 1 if kind in CSV_TYPES else 0
        self._sha = hashlib.sha256()
        self.bytes = 0
        self._newlines = 0
        self._last = b"\n"

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._sha.update(chunk)
        self.bytes += len(chunk)
        if self._lines:
            self._newlines += chunk.count(b"\n")
            self._last = chunk[-1:]

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def records(self, gated: GatedStream | None = None) -> int:
        if gated is not None:
            return gated.counters.released
        if not self._lines or self.bytes == 0:
            return 0
        lines = self._newlines + (0 if self._last == b"\n" else 1)
        return max(0, lines - self._header_lines)
