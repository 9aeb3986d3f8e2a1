"""Rendering the operator pages: the Jinja2 environment, page responses and their headers."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from runtime.dependencies import service_core
from runtime.page_styles import page_stylesheet

# No script at all, styles from this connector only, forms post back here only, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def path_segment(value: str) -> str:
    """``value`` as one URL path segment (``/`` and ``:`` escaped too)."""
    return quote(value, safe="")


def when(value: int | datetime | None) -> str:
    """A timestamp (epoch milliseconds or datetime) as ``2026-11-01 12:00 UTC``."""
    if value is None:
        return "unknown"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: int | datetime | None) -> str:
    if value is None:
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def short_iri(value: str | None) -> str:
    """The last segment of an IRI (``…/data-theme/TRAN`` → ``TRAN``); other text unchanged."""
    if not value:
        return ""
    if value.startswith(("http://", "https://")):
        tail = value.rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
        return tail or value
    return value


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("connector.pages", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["segment"] = path_segment
    env.filters["when"] = when
    env.filters["iso"] = iso
    env.filters["short_iri"] = short_iri
    return env


def stylesheet() -> bytes:
    return page_stylesheet("connector.pages", "pages.css")


def page(
    request: Request,
    template: str,
    *,
    title: str,
    status: int = 200,
    csrf_token: str | None = None,
    section: str | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A full page; ``csrf_token`` is given on signed-in pages (it also shows the navigation)."""
    settings = service_core(request).settings
    html = (
        environment()
        .get_template(template)
        .render(
            title=title,
            connector_name=settings.name,
            did=settings.did,
            signed_in=csrf_token is not None,
            csrf_token=csrf_token or "",
            section=section,
            **context,
        )
    )
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def refused_page(request: Request, csrf_token: str | None) -> HTMLResponse:
    """403: a form without its CSRF token (or with a wrong one)."""
    return page(
        request,
        "message.html",
        title="Request refused",
        status=403,
        csrf_token=csrf_token,
        heading="Request refused",
        message="The form was missing its security token or the token was wrong. "
        "Go back, reload the page and try again.",
    )


SECTION_HOMES = {
    "assets": ("/ui", "Back to assets and offers"),
    "marketplace": ("/ui/marketplace", "Back to the marketplace"),
    "negotiations": ("/ui/negotiations", "Back to negotiations"),
    "agreements": ("/ui/agreements", "Back to agreements"),
    "transfers": ("/ui/transfers", "Back to transfers"),
}


def not_found_page(
    request: Request,
    csrf_token: str,
    section: str,
    what: str,
    *,
    status: int = 404,
    heading: str = "Not found",
) -> HTMLResponse:
    back_url, back_text = SECTION_HOMES.get(section, SECTION_HOMES["assets"])
    return page(
        request,
        "message.html",
        title=heading,
        status=status,
        csrf_token=csrf_token,
        section=section,
        heading=heading,
        message=what,
        back_url=back_url,
        back_text=back_text,
    )
