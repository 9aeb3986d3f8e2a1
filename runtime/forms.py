"""Reading the small URL-encoded forms of server-rendered pages, and comparing their secrets."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from runtime.requests import read_body

MAX_FORM_BYTES = 8 * 1024
MAX_FORM_FIELDS = 20


def same_secret(supplied: str, expected: str) -> bool:
    """Constant-time comparison of two texts."""
    return hmac.compare_digest(supplied.encode(), expected.encode())


async def read_form(request: Request) -> FormData:
    """A small URL-encoded form (at most 8 KiB); anything else reads as an empty form."""
    body = await read_body(request, MAX_FORM_BYTES)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return FormData()
    try:
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        )
    except ValueError:  # more fields than any of these forms has
        return FormData()
    return FormData(pairs)


def form_text(form: FormData, name: str) -> str:
    """A form field as text ('' when it is missing)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""
