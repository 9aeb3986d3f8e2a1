"""``X-Api-Key`` authentication of the Management API."""

from __future__ import annotations

import hmac

from fastapi import Request

from connector.management.errors import ManagementApiError
from runtime.dependencies import service_core


async def require_api_key(request: Request) -> None:
    # async: no I/O here, and FastAPI runs a plain ``def`` dependency in a worker thread (a hand-off
    # per Management API request for a string comparison).
    supplied = request.headers.getlist("x-api-key")
    if not supplied:
        raise ManagementApiError(401, "AuthenticationFailed", "x-api-key not found")
    expected = service_core(request).settings.management_api_key
    if (
        len(supplied) != 1
        or expected is None
        or not hmac.compare_digest(supplied[0].encode(), expected.get_secret_value().encode())
    ):
        raise ManagementApiError(401, "AuthenticationFailed", "Request could not be authenticated")
