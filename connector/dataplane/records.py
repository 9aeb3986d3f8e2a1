"""Cutting a byte stream into whole records, and reading each record's subject id.

Three formats, chosen by media type: NDJSON (one JSON value per line), CSV (a header row,
then rows; quoted fields may hold commas and newlines) and a JSON array of objects. A
framer is fed chunks as they come and returns the records complete so far, as their raw
bytes (to re-emit exactly what the provider holds) beside their subject ids; ``join``
writes kept records back in the same format.

A record's subject is a top-level field: a string, or an integer written as text. Anything
else (missing, null, a number with a fraction, an object, a line that is not JSON) has no
subject, and the gate never admits it.
"""

from __future__ import annotations

import csv
import re
from abc import ABC, abstractmethod
from operator import attrgetter
from typing import Any

import msgspec
import orjson

MAX_RECORD_BYTES = 16 * 1024 * 1024

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-seq"}
)
CSV_TYPES = frozenset({"text/csv", "application/csv"})
JSON_TYPES = frozenset({"application/json"})

Records = tuple[list[bytes], list[str | None]]
_SUBJECT = attrgetter("subject")  # of an NDJSON line read by NdjsonFramer's decoder


class RecordFormatError(ValueError):
    """The bytes are not records of the announced format (the stream must stop, nothing guessed)."""


def base_media_type(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def subject_of(value: object) -> str | None:
    if type(value) is str:
        return value or None
    if type(value) is int:
        return str(value)
    return None


class RecordFramer(ABC):
    header: bytes = b""  # written before the first kept record (even when none is kept)
    trailer: bytes = b""  # written after the last

    def __init__(self, subject_field: str, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.subject_field = subject_field
        self.max_record_bytes = max_record_bytes

    @abstractmethod
    def feed(self, chunk: bytes) -> Records:
        """Records completed by ``chunk``."""

    @abstractmethod
    def finish(self) -> Records:
        """Records left at the end of input; raises ``RecordFormatError`` if one is cut short."""

    @abstractmethod
    def join(self, kept: list[bytes], first: bool) -> bytes:
        """Kept records in the output format; ``first``: nothing was written before them."""


class NdjsonFramer(RecordFramer):
    """One record per line; blank lines are dropped, a last line without a newline is a record."""

    def __init__(self, subject_field: str, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(subject_field, max_record_bytes)
        self._tail = b""
        # Each line is checked to be one JSON object, but only the subject field is built as a value:
        # the rest is validated and skipped in C (a third of the cost of parsing the whole record).
        # Duplicate keys: the last one counts, as for orjson and Python's json.
        subject = msgspec.defstruct(
            "Subject",
            [("subject", Any, None)],
            rename={"subject": subject_field},
            forbid_unknown_fields=False,
        )
        self._decode = msgspec.json.Decoder(subject).decode

    def feed(self, chunk: bytes) -> Records:
        data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > self.max_record_bytes:
            raise RecordFormatError(f"a line is longer than {self.max_record_bytes} bytes")
        return self._frame(lines, data.isascii())

    def finish(self) -> Records:
        tail, self._tail = self._tail, b""
        return self._frame([tail], tail.isascii()) if tail else ([], [])

    def _frame(self, lines: list[bytes], ascii_only: bool) -> Records:
        # The decoder does not check the UTF-8 of the fields it skips: text that is not plain ASCII
        # is checked line by line (a line that is not UTF-8 is not JSON: it names no subject).
        try:  # the common case, every line a JSON object: read in one C-level pass
            if not ascii_only:
                raise UnicodeError
            found: list[object] = list(map(_SUBJECT, map(self._decode, lines)))
        except (msgspec.DecodeError, UnicodeError):  # (ValidationError: JSON, but not an object)
            lines, found = self._read_one_by_one(lines)
        if set(map(type, found)) == {str} and "" not in found:
            return lines, found  # type: ignore[return-value]  # all non-empty text, checked just above
        return lines, [subject_of(s) for s in found]

    def _read_one_by_one(self, lines: list[bytes]) -> tuple[list[bytes], list[object]]:
        """Blank lines dropped; a line that is not a JSON object kept as a record without a subject."""
        kept: list[bytes] = []
        found: list[object] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                line.decode("utf-8")
                found.append(self._decode(line).subject)  # type: ignore[attr-defined]  # see __init__
            except (msgspec.DecodeError, UnicodeError):
                found.append(None)
            kept.append(line)
        return kept, found

    def join(self, kept: list[bytes], first: bool) -> bytes:
        if not kept:
            return b""
        return b"\n".join(kept) + b"\n"


class CsvFramer(RecordFramer):
    """A header row naming the subject column, then rows (RFC 4180 quoting, LF or CRLF)."""

    def __init__(self, subject_field: str, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(subject_field, max_record_bytes)
        self._tail = b""
        self._pending = b""  # a row whose quoted field spans lines
        self._column: int | None = None
        self.header = b""

    def feed(self, chunk: bytes) -> Records:
        data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) + len(self._pending) > self.max_record_bytes:
            raise RecordFormatError(f"a row is longer than {self.max_record_bytes} bytes")
        return self._frame(lines)

    def finish(self) -> Records:
        tail, self._tail = self._tail, b""
        records = self._frame([tail] if tail else [])
        if self._pending:
            raise RecordFormatError("the CSV data ends inside a quoted field")
        if self._column is None:
            raise RecordFormatError("the CSV data has no header row")
        return records

    def _frame(self, lines: list[bytes]) -> Records:
        raws: list[bytes] = []
        subjects: list[str | None] = []
        for line in lines:
            if self._pending or b'"' in line:
                row = self._pending + line if self._pending else line
                if row.count(b'"') % 2:  # an open quote: the row goes on on the next line
                    self._pending = row + b"\n"
                    continue
                self._pending = b""
                fields = self._parse(row)
            else:
                row = line
                fields = None
            if self._column is None:
                self._read_header(row, fields)
                continue
            if not row.strip():
                continue
            if fields is None:
                parts = row.split(b",")
                value = parts[self._column] if self._column < len(parts) else b""
                if self._column == len(parts) - 1:
                    value = value.rstrip(b"\r")
                try:
                    subject = value.decode("utf-8") or None
                except UnicodeDecodeError:
                    subject = None
            else:
                subject = (fields[self._column] or None) if self._column < len(fields) else None
            raws.append(row)
            subjects.append(subject)
        return raws, subjects

    @staticmethod
    def _parse(row: bytes) -> list[str]:
        try:
            return next(csv.reader([row.rstrip(b"\r").decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error):
            return []

    def _read_header(self, row: bytes, fields: list[str] | None) -> None:
        names = fields if fields is not None else self._parse(row)
        names = [n.strip().lstrip("\ufeff") for n in names]
        if self.subject_field not in names:
            raise RecordFormatError(f"the CSV header has no column '{self.subject_field}'")
        self._column = names.index(self.subject_field)
        self.header = row + b"\n"

    def join(self, kept: list[bytes], first: bool) -> bytes:
        if not kept:
            return b""
        return b"\n".join(kept) + b"\n"


_OUTSIDE = re.compile(rb'[\[\]{}",]')
_INSIDE = re.compile(rb'["\\]')
_SPACE = b" \t\r\n"
# An element that is an object holding no object or array (strings may hold anything), then its separator;
# possessive quantifiers: no backtracking, so a failed match (an element cut by a chunk end) costs one pass.
_FLAT_ELEMENT = re.compile(
    rb'[ \t\r\n]*+(\{(?:[^{}\[\]"\\]++|"(?:[^"\\]++|\\.)*+")*+\})[ \t\r\n]*+([,\]])', re.DOTALL
)


class JsonArrayFramer(RecordFramer):
    """A top-level JSON array; each element is a record (objects carry subjects)."""

    header = b"["
    trailer = b"]\n"

    def __init__(self, subject_field: str, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(subject_field, max_record_bytes)
        self._buffer = b""
        self._scan = 0  # where scanning resumes in the buffer
        self._depth = 0  # nesting inside the top-level array (0: between elements)
        self._in_string = False
        self._state = "before"  # before → inside → after
        self._seen_any = False  # an element was read (so an empty one is an error, not "[]")

    def feed(self, chunk: bytes) -> Records:
        self._buffer += chunk
        records = self._consume()
        if len(self._buffer) > self.max_record_bytes:
            raise RecordFormatError(f"an array element is longer than {self.max_record_bytes} bytes")
        return records

    def finish(self) -> Records:
        records = self._consume()
        if self._state != "after":
            raise RecordFormatError("the JSON data is not a complete top-level array")
        return records

    def _consume(self) -> Records:
        raws: list[bytes] = []
        buf = self._buffer
        i = self._scan
        start = 0
        if self._state == "before":
            stripped = buf.lstrip(_SPACE)
            if not stripped:
                self._buffer, self._scan = b"", 0
                return [], []
            if not stripped.startswith(b"["):
                raise RecordFormatError("personal JSON data must be a top-level array of records")
            buf = stripped[1:]
            self._state, i = "inside", 0
        while self._state == "inside":
            if i == start and self._depth == 0 and not self._in_string:
                flat = _FLAT_ELEMENT.match(buf, i)
                if flat is not None:  # a whole object without nested containers: cut in one step
                    self._element(flat.group(1), raws, False)
                    start = i = flat.end()
                    if flat.group(2) == b"]":
                        self._state = "after"
                        if buf[i:].strip(_SPACE):
                            raise RecordFormatError("the JSON data goes on after its top-level array")
                    continue
            if self._in_string:
                match = _INSIDE.search(buf, i)
                if match is None:
                    i = len(buf)
                    break
                if match.group() == b"\\":
                    if match.end() >= len(buf):
                        i = match.start()  # the escaped character has not arrived yet
                        break
                    i = match.end() + 1
                    continue
                self._in_string = False
                i = match.end()
                continue
            match = _OUTSIDE.search(buf, i)
            if match is None:
                i = len(buf)
                break
            char = match.group()
            i = match.end()
            if char == b'"':
                self._in_string = True
            elif char in (b"{", b"["):
                self._depth += 1
            elif char in (b"}", b"]") and self._depth > 0:
                self._depth -= 1
            elif self._depth == 0:  # a comma or the closing bracket ends an element
                self._element(buf[start : match.start()], raws, char == b"]")
                start = i
                if char == b"]":
                    self._state = "after"
                    if buf[i:].strip(_SPACE):
                        raise RecordFormatError("the JSON data goes on after its top-level array")
        if self._state == "after":
            self._buffer, self._scan = b"", 0
        else:
            self._buffer, self._scan = buf[start:], i - start
        return raws, self._subjects(raws)

    def _element(self, raw: bytes, raws: list[bytes], last: bool) -> None:
        element = raw.strip(_SPACE)
        if not element:
            if last and not raws and not self._seen_any:
                return  # the empty array
            raise RecordFormatError("the JSON array has an empty element")
        self._seen_any = True
        raws.append(element)

    def _subjects(self, raws: list[bytes]) -> list[str | None]:
        try:
            values = list(map(orjson.loads, raws))
        except orjson.JSONDecodeError:
            raise RecordFormatError("an element of the JSON array is not valid JSON") from None
        name = self.subject_field
        return [subject_of(value.get(name)) if type(value) is dict else None for value in values]

    def join(self, kept: list[bytes], first: bool) -> bytes:
        if not kept:
            return b""
        body = b",\n".join(kept)
        return body if first else b",\n" + body


def framer_for(media_type: str, subject_field: str, max_record_bytes: int = MAX_RECORD_BYTES) -> RecordFramer:
    """The framer for a media type; ``RecordFormatError`` for one that has no records we can read."""
    kind = base_media_type(media_type)
    if kind in NDJSON_TYPES:
        return NdjsonFramer(subject_field, max_record_bytes)
    if kind in CSV_TYPES:
        return CsvFramer(subject_field, max_record_bytes)
    if kind in JSON_TYPES or kind.endswith("+json"):
        return JsonArrayFramer(subject_field, max_record_bytes)
    raise RecordFormatError(
        f"personal data of media type {kind or 'unknown'} cannot be filtered record by record"
    )
