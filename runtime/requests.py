"""Reading request bodies safely: a size limit (413) and JSON that must parse."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError(400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    return bytes(body)


async def read_json(
    request: Request, *, optional: bool = False, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Any:
    """The parsed JSON body; None when ``optional`` and the body is empty."""
    body = await read_body(request, max_bytes)
    if not body.strip():
        if optional:
            return None
        raise BodyError(400, "the request needs a JSON body")
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_int=_int64, parse_float=_finite_float)
    except ValueError as exc:
        raise BodyError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, "the body is nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Numbers no database column or JSON response can hold would fail later, as a 500 (1e400 is
# stored as infinity, which no response can then serialise; 10**20 overflows SQLite's integers).
def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"the number {text[:30]} is out of range (at most 64-bit integers)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is out of range for a double")
    return value
