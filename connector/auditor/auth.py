"""Who is signed in to the audit pages: the auditor session cookie, checked on every request.

The cookie is scoped to ``/ui/audit`` and is a different cookie, signed with a different
key, from the operator's: nothing the operator pages or the Management API accept is ever
an auditor credential, and an auditor session opens none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response

from connector.auditor.accounts import get_auditor
from connector.auditor.session import AuditorSessions, token_name
from runtime.dependencies import service_core

AUDIT_PATH = "/ui/audit"
AUDIT_LOGIN_PATH = "/ui/audit/login"
AUDITOR_COOKIE = "tessera_auditor_session"


@dataclass(frozen=True)
class SignedInAuditor:
    name: str
    csrf_token: str
    session_token: str


def sessions_for(request: Request) -> AuditorSessions:
    return AuditorSessions(service_core(request).key)


def current_auditor(request: Request) -> SignedInAuditor | None:
    """The auditor whose valid session this request carries (the account must still exist)."""
    token = request.cookies.get(AUDITOR_COOKIE)
    name = token_name(token)
    if token is None or name is None:
        return None
    account = get_auditor(service_core(request).engine, name)
    sessions = sessions_for(request)
    if account is None or not sessions.is_valid(token, account.session_salt):
        return None
    return SignedInAuditor(name, sessions.csrf_for(token), token)


def safe_audit_next(target: str | None) -> str:
    """Where to go after signing in: a path of the audit pages, never another site."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return AUDIT_PATH
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not (parts.path == AUDIT_PATH or parts.path.startswith(AUDIT_PATH + "/"))
    ):
        return AUDIT_PATH
    return target


def auditor_signed_in(request: Request) -> SignedInAuditor:
    """Dependency of every audit page but sign-in: the auditor, or a redirect to sign in."""
    auditor = current_auditor(request)
    if auditor is None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = (
            AUDIT_LOGIN_PATH if here == AUDIT_PATH else f"{AUDIT_LOGIN_PATH}?next={quote(here, safe='')}"
        )
        raise HTTPException(status_code=303, detail="sign in first", headers={"Location": location})
    return auditor


def _secure(request: Request) -> bool:
    return service_core(request).settings.public_url.startswith("https://")


def set_auditor_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        AUDITOR_COOKIE,
        token,
        max_age=max_age,
        path=AUDIT_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_auditor_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        AUDITOR_COOKIE, path=AUDIT_PATH, httponly=True, samesite="strict", secure=_secure(request)
    )
