"""Who is signed in to the citizen pages: cookies, the session dependency and CSRF checks.

Cookies are HttpOnly, ``SameSite=Lax`` (the OpenID Connect provider sends the
citizen back with a cross-site GET, which must carry the sign-in binding; every
change is a POST with the session's CSRF token, so Lax does not open a hole)
and ``Secure`` whenever the service's public URL is https.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response
from sqlmodel import Session
from starlette.datastructures import FormData

from consent.accounts import CitizenView, get_citizen
from consent.citizen_sessions import SignedIn, find_session
from runtime.dependencies import service_core
from runtime.forms import form_text, same_secret

PAGES_PATH = "/citizen"
SIGN_IN_PATH = "/citizen/sign-in"
SESSION_COOKIE = "tessera_citizen_session"
SIGN_IN_CSRF_COOKIE = "tessera_citizen_sign_in_csrf"
OIDC_BINDING_COOKIE = "tessera_citizen_oidc"
CSRF_FIELD = "csrf_token"
SIGN_IN_CSRF_LIFETIME_SECONDS = 60 * 60
OIDC_BINDING_LIFETIME_SECONDS = 10 * 60


@dataclass(frozen=True)
class Citizen:
    """The signed-in citizen of this request: their account and the session's CSRF token."""

    account: CitizenView
    session: SignedIn

    @property
    def id(self) -> str:
        return self.account.id

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token


def _secure(request: Request) -> bool:
    return service_core(request).settings.public_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=PAGES_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=PAGES_PATH, httponly=True, samesite="lax", secure=_secure(request))


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of these pages, never another site."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target) or len(target) > 512:
        return PAGES_PATH
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not (parts.path == PAGES_PATH or parts.path.startswith(PAGES_PATH + "/"))
    ):
        return PAGES_PATH
    return target


def sign_in_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return SIGN_IN_PATH if here == PAGES_PATH else f"{SIGN_IN_PATH}?next={quote(here, safe='')}"


def current_citizen(request: Request, db: Session) -> Citizen | None:
    signed_in = find_session(db, request.cookies.get(SESSION_COOKIE))
    if signed_in is None:
        return None
    account = get_citizen(db, signed_in.citizen_id)
    return Citizen(account, signed_in) if account is not None else None


def require_citizen(request: Request, db: Session) -> Citizen:
    """The signed-in citizen, or a redirect (303) to the sign-in page."""
    citizen = current_citizen(request, db)
    if citizen is None:
        raise HTTPException(
            status_code=303, detail="sign in first", headers={"Location": sign_in_url(request)}
        )
    return citizen


def csrf_matches(citizen: Citizen, form: FormData) -> bool:
    supplied = form_text(form, CSRF_FIELD)
    return bool(supplied) and same_secret(supplied, citizen.csrf_token)


def sign_in_csrf(request: Request) -> str:
    """The sign-in form's double-submit token: the cookie's value, or a new one."""
    existing = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    return existing if 32 <= len(existing) <= 64 else secrets.token_urlsafe(32)


def sign_in_csrf_matches(request: Request, form: FormData) -> bool:
    cookie = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    supplied = form_text(form, CSRF_FIELD)
    return bool(cookie) and bool(supplied) and same_secret(supplied, cookie)
