"""``/citizen``: a citizen's choices, history, receipts, transfers and export (placeholder until the model lands)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from consent.pages.auth import PAGES_PATH, require_citizen
from consent.pages.render import page, stylesheet
from runtime.dependencies import db_session


def citizen_pages_router() -> APIRouter:
    router = APIRouter(prefix=PAGES_PATH, include_in_schema=False)

    @router.get("/static/consent.css")
    def css() -> Response:
        return Response(
            stylesheet(),
            media_type="text/css",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("")
    def overview(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        return page(request, "choices.html", title="Your choices", citizen=citizen, section="choices")

    return router


def root_redirect() -> Response:
    return RedirectResponse(PAGES_PATH, status_code=303)
