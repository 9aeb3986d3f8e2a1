"""HTTP byte ranges (RFC 9110 §14): parsing a ``Range`` header against a known size.

A header that does not parse is a client error (400, ``RangeNotParsable``); one that parses
but selects nothing of this representation is 416 (``RangeNotSatisfiable``, which carries the
size for the ``Content-Range: bytes */size`` answer). Units other than ``bytes`` and requests
for several ranges are ignored, as RFC 9110 allows: the whole representation is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"^(\d{1,19})?-(\d{1,19})?$")


class RangeError(ValueError):
    status: int = 400


class RangeNotParsable(RangeError):
    status = 400


class RangeNotSatisfiable(RangeError):
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end``, both inclusive (as HTTP counts them)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"not a byte range: {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range a ``Range`` header selects from ``size`` bytes, or None to serve everything."""
    if header is None or not header.strip():
        return None
    unit, sep, specs = header.strip().partition("=")
    if not sep or not unit.strip():
        raise RangeNotParsable(
            f"Range header does not parse: expected 'bytes=first-last', got {header[:60]!r}"
        )
    if unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",")]
    parsed: list[tuple[int | None, int | None]] = []
    for part in parts:
        match = _SPEC.fullmatch(part)
        if match is None or (match.group(1) is None and match.group(2) is None):
            raise RangeNotParsable(f"Range header does not parse: bad range {part[:40]!r}")
        first = int(match.group(1)) if match.group(1) is not None else None
        last = int(match.group(2)) if match.group(2) is not None else None
        if first is not None and last is not None and last < first:
            raise RangeNotParsable(f"Range header does not parse: {part} ends before it starts")
        parsed.append((first, last))
    if len(parsed) > 1:
        return None
    first, last = parsed[0]
    if first is None:  # suffix: the last ``last`` bytes
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(f"range -{last} selects nothing of {size} bytes", size)
        return ByteRange(max(0, size - last), size - 1)
    if first >= size:
        raise RangeNotSatisfiable(f"range starts at {first}, past the last byte of {size}", size)
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end)
