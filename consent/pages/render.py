"""Rendering the citizen pages: the Jinja2 environment, page responses and their headers."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from consent.pages.auth import Citizen
from runtime.dependencies import service_core

# Scripts and styles from this service only (one small script that enhances the switches; the pages
# work without it), requests back here only, forms post back here only, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def csp_with_form_targets(origins: list[str]) -> dict[str, str]:
    """The CSP of a page whose form may lead on to these origins (the sign-in provider's)."""
    allowed = " ".join(["'self'", *origins])
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", f"form-action {allowed}"
        )
    }


PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: int | datetime | None) -> str:
    """A timestamp (epoch milliseconds or datetime) as ``2026-11-01 12:00:05 UTC``."""
    if value is None:
        return "never"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: int | datetime | None) -> str:
    if value is None:
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("consent.pages", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["iso"] = iso
    return env


@cache
def static_file(name: str) -> bytes:
    return (resources.files("consent.pages") / "static" / name).read_bytes()


def page(
    request: Request,
    template: str,
    *,
    title: str,
    citizen: Citizen | None = None,
    status: int = 200,
    section: str | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A full page; with ``citizen`` it shows the navigation and the sign-out button."""
    settings = service_core(request).settings
    html = (
        environment()
        .get_template(template)
        .render(
            title=title,
            service_name=settings.name,
            citizen=citizen,
            csrf_token=citizen.csrf_token if citizen is not None else "",
            section=section,
            **context,
        )
    )
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def message_page(
    request: Request,
    *,
    title: str,
    message: str,
    status: int,
    citizen: Citizen | None = None,
) -> HTMLResponse:
    return page(
        request, "message.html", title=title, citizen=citizen, status=status, heading=title, message=message
    )


def refused_page(request: Request, citizen: Citizen | None) -> HTMLResponse:
    """403: a form without its security token (or with a wrong one)."""
    return message_page(
        request,
        title="Request refused",
        status=403,
        citizen=citizen,
        message="The form was missing its security token or the token was wrong, so nothing was changed. "
        "Go back, reload the page and try again.",
    )
