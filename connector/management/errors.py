"""EDC-style error bodies: a JSON array of ``{message, type, path, invalidValue}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import JsonLdInputError
from catalog.queryspec import QuerySpecError
from runtime.requests import BodyError


class ManagementApiError(Exception):
    def __init__(
        self, status: int, error_type: str, message: str, path: str | None = None, invalid_value: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.path = path
        self.invalid_value = invalid_value


def error_response(
    status: int, error_type: str, message: str, path: str | None = None, invalid_value: Any = None
) -> JSONResponse:
    body = [{"message": message, "type": error_type, "path": path, "invalidValue": invalid_value}]
    return JSONResponse(body, status_code=status)


def _is_management(request: Request) -> bool:
    return request.url.path.startswith("/management/")


def install_management_error_handlers(app: FastAPI) -> None:
    """Map domain errors to EDC's status codes and types, for management routes."""

    @app.exception_handler(ManagementApiError)
    async def management_error(_request: Request, exc: ManagementApiError) -> JSONResponse:
        return error_response(exc.status, exc.error_type, exc.message, exc.path, exc.invalid_value)

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(404, "ObjectNotFound", str(exc))

    @app.exception_handler(ConflictError)
    async def conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        return error_response(409, "ObjectConflict", str(exc))

    @app.exception_handler(InvalidInputError)
    async def invalid(_request: Request, exc: InvalidInputError) -> JSONResponse:
        return error_response(400, "ValidationFailure", str(exc), exc.path, exc.invalid_value)

    @app.exception_handler(QuerySpecError)
    async def bad_query(_request: Request, exc: QuerySpecError) -> JSONResponse:
        return error_response(400, "InvalidRequest", str(exc), exc.path, exc.invalid_value)

    @app.exception_handler(JsonLdInputError)
    async def bad_jsonld(_request: Request, exc: JsonLdInputError) -> JSONResponse:
        return error_response(400, "InvalidRequest", str(exc), exc.path)

    @app.exception_handler(BodyError)
    async def bad_body(request: Request, exc: BodyError) -> JSONResponse:
        if _is_management(request):
            return error_response(exc.status, "InvalidRequest", exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)
