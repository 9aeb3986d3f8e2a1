"""DSP error bodies (``CatalogError``, ``ContractNegotiationError``, ``TransferError``)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from catalog.jsonld import DSPACE_CONTEXT_URL
from runtime.settings import DSP_PATH


class DspError(Exception):
    def __init__(self, status: int, error_type: str, reasons: list[str], **ids: str) -> None:
        super().__init__("; ".join(reasons))
        self.status = status
        self.error_type = error_type
        self.reasons = reasons
        self.ids = ids


def dsp_error_body(error_type: str, status: int, reasons: list[str], **ids: str) -> dict[str, Any]:
    body: dict[str, Any] = {"@context": [DSPACE_CONTEXT_URL], "@type": error_type, **ids}
    body["code"] = str(status)
    body["reason"] = reasons
    return body


def dsp_error_response(exc: DspError) -> JSONResponse:
    return JSONResponse(
        dsp_error_body(exc.error_type, exc.status, exc.reasons, **exc.ids), status_code=exc.status
    )


def error_type_for_path(path: str) -> str | None:
    """The DSP error type of the protocol area a path belongs to."""
    if not path.startswith(DSP_PATH + "/"):
        return None
    area = path[len(DSP_PATH) + 1 :].split("/", 1)[0]
    return {
        "catalog": "CatalogError",
        "negotiations": "ContractNegotiationError",
        "transfers": "TransferError",
    }.get(area)
