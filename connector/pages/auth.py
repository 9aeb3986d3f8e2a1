"""Who is signed in to the operator pages, and the cookies that say so."""

from __future__ import annotations

import secrets
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response
from starlette.datastructures import FormData

from connector.pages.session import SessionSigner
from runtime.dependencies import service_core
from runtime.forms import same_secret

UI_PATH = "/ui"
LOGIN_PATH = "/ui/login"
SESSION_COOKIE = "tessera_session"
LOGIN_CSRF_COOKIE = "tessera_login_csrf"
CSRF_FIELD = "csrf_token"
LOGIN_CSRF_LIFETIME_SECONDS = 60 * 60


def signer_for(request: Request) -> SessionSigner | None:
    """The signer of this connector's sessions; None when no management API key is configured."""
    key = service_core(request).settings.management_api_key
    return SessionSigner(key.get_secret_value()) if key is not None else None


def api_key_matches(request: Request, supplied: str) -> bool:
    key = service_core(request).settings.management_api_key
    return key is not None and bool(supplied) and same_secret(supplied, key.get_secret_value())


def session_token(request: Request) -> str | None:
    """The request's session token when it is valid (signed, unexpired, for the current API key)."""
    token = request.cookies.get(SESSION_COOKIE)
    signer = signer_for(request)
    return token if signer is not None and signer.is_valid(token) else None


def _secure(request: Request) -> bool:
    return service_core(request).settings.public_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=UI_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=UI_PATH, httponly=True, samesite="strict", secure=_secure(request))


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of these pages, never another site."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return UI_PATH
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == UI_PATH or parts.path.startswith(UI_PATH + "/")):
        return UI_PATH
    return target


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return LOGIN_PATH if here == UI_PATH else f"{LOGIN_PATH}?next={quote(here, safe='')}"


def signed_in(request: Request) -> str:
    """Dependency of every page but sign-in: the session's CSRF token, or a redirect to sign in."""
    token = session_token(request)
    signer = signer_for(request)
    if token is None or signer is None:
        raise HTTPException(status_code=303, detail="sign in first", headers={"Location": login_url(request)})
    return signer.csrf_for(token)


def login_csrf(request: Request) -> str:
    """The sign-in form's double-submit token: the cookie's value, or a new one."""
    existing = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return existing if 32 <= len(existing) <= 64 else secrets.token_urlsafe(32)


def login_csrf_matches(request: Request, form: FormData) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    supplied = form.get(CSRF_FIELD)
    return bool(cookie) and isinstance(supplied, str) and same_secret(supplied, cookie)
