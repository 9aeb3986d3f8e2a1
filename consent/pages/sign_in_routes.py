"""Signing citizens in and out: name and password, or the configured OpenID Connect provider.

Every successful sign-in makes a new server-side session (the session the
browser presented before, if any, ends): a session id planted in a browser
before sign-in is never the one it is signed in with. Attempts are limited per
client address and per account name; past the limit the answer is 429 with
``Retry-After``, and the password is not even checked.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.datastructures import FormData

from consent.accounts import citizen_for_oidc, verify_password
from consent.citizen_sessions import (
    SESSION_LIFETIME,
    begin_oidc_sign_in,
    end_session,
    start_session,
    take_oidc_sign_in,
)
from consent.oidc import OidcClient, OidcConfig, OidcError
from consent.pages.auth import (
    OIDC_BINDING_COOKIE,
    OIDC_BINDING_LIFETIME_SECONDS,
    PAGES_PATH,
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    SIGN_IN_CSRF_LIFETIME_SECONDS,
    SIGN_IN_PATH,
    clear_cookie,
    csrf_matches,
    current_citizen,
    safe_next,
    set_cookie,
    sign_in_csrf,
    sign_in_csrf_matches,
)
from consent.pages.render import csp_with_form_targets, message_page, page, refused_page
from consent.settings import ConsentSettings
from runtime.dependencies import db_session, service_core
from runtime.forms import form_text, read_form
from runtime.logging import get_logger
from runtime.ratelimit import SharedAttemptLimiter, client_address

SIGN_IN_ATTEMPTS_PER_ADDRESS = 10
SIGN_IN_ATTEMPTS_PER_NAME = 10
SIGN_IN_WINDOW_SECONDS = 60.0
OIDC_CALLBACK_PATH = PAGES_PATH + "/oidc/callback"
log = get_logger("tessera.consent.sign_in")


def oidc_client_for(settings: ConsentSettings) -> OidcClient | None:
    if settings.oidc_issuer is None or not settings.oidc_client_id or settings.oidc_client_secret is None:
        return None
    return OidcClient(
        OidcConfig(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value(),
            redirect_uri=settings.public_url + OIDC_CALLBACK_PATH,
        )
    )


def _signed_in_response(request: Request, db: Session, citizen_id: str, next_path: str) -> Response:
    signed_in = start_session(db, citizen_id, replaces=request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, SESSION_COOKIE, signed_in.token, int(SESSION_LIFETIME.total_seconds()))
    clear_cookie(request, response, SIGN_IN_CSRF_COOKIE)
    return response


def sign_in_router(settings: ConsentSettings) -> APIRouter:
    router = APIRouter(prefix=PAGES_PATH, include_in_schema=False)
    by_address = SharedAttemptLimiter("citizen-address", SIGN_IN_ATTEMPTS_PER_ADDRESS, SIGN_IN_WINDOW_SECONDS)
    by_name = SharedAttemptLimiter("citizen-name", SIGN_IN_ATTEMPTS_PER_NAME, SIGN_IN_WINDOW_SECONDS)
    oidc = oidc_client_for(settings)

    def sign_in_page(
        request: Request,
        *,
        next_path: str,
        status: int = 200,
        error: str | None = None,
        notice: str | None = None,
        name: str = "",
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        token = sign_in_csrf(request)
        # The "sign in with" form is answered by a redirect to the provider: the CSP must allow it.
        csp = csp_with_form_targets(oidc.form_targets()) if oidc is not None else {}
        response = page(
            request,
            "sign_in.html",
            title="Sign in" if error is None else "Sign in: not signed in",
            status=status,
            headers={**csp, **(headers or {})},
            sign_in_csrf=token,
            next_path=next_path,
            error=error,
            notice=notice,
            name=name,
            oidc_provider=settings.oidc_provider_name if oidc is not None else None,
        )
        set_cookie(request, response, SIGN_IN_CSRF_COOKIE, token, SIGN_IN_CSRF_LIFETIME_SECONDS)
        return response

    @router.get("/sign-in")
    def sign_in_form(request: Request, db: Session = Depends(db_session)) -> Response:
        next_path = safe_next(request.query_params.get("next"))
        if current_citizen(request, db) is not None:
            return RedirectResponse(next_path, status_code=303)
        notice = "You have signed out." if request.query_params.get("signed_out") else None
        return sign_in_page(request, next_path=next_path, notice=notice)

    @router.post("/sign-in")
    def sign_in(
        request: Request, db: Session = Depends(db_session), form: FormData = Depends(read_form)
    ) -> Response:
        # A plain function: FastAPI runs it in a worker thread, so the password hash (tens of ms) and
        # the database never hold up the event loop.
        next_path = safe_next(form_text(form, "next"))
        name = form_text(form, "name").strip().lower()[:64]
        engine = service_core(request).engine
        wait = by_address.attempt(engine, client_address(request))
        if wait is None and name:
            wait = by_name.attempt(engine, name)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            log.warning("citizen sign-in rate limited")
            return sign_in_page(
                request,
                next_path=next_path,
                status=429,
                name=name,
                error=f"Too many sign-in attempts. Try again in {seconds} seconds.",
                headers={"Retry-After": str(seconds)},
            )
        if not sign_in_csrf_matches(request, form):
            return refused_page(request, None)
        citizen = verify_password(db, name, form_text(form, "password"))
        if citizen is None:
            return sign_in_page(
                request,
                next_path=next_path,
                status=401,
                name=name,
                error="That name and password do not match an account.",
            )
        return _signed_in_response(request, db, citizen.id, next_path)

    @router.post("/sign-out")
    def sign_out(
        request: Request, db: Session = Depends(db_session), form: FormData = Depends(read_form)
    ) -> Response:
        citizen = current_citizen(request, db)
        if citizen is None:
            return RedirectResponse(SIGN_IN_PATH, status_code=303)
        if not csrf_matches(citizen, form):
            return refused_page(request, citizen)
        end_session(db, citizen.session.token)
        response = RedirectResponse(f"{SIGN_IN_PATH}?signed_out=true", status_code=303)
        clear_cookie(request, response, SESSION_COOKIE)
        return response

    @router.post("/oidc/start")
    async def oidc_start(request: Request, db: Session = Depends(db_session)) -> Response:
        form = await read_form(request)
        if oidc is None:
            return message_page(
                request,
                title="Not available",
                status=404,
                message="Sign-in through another account is not set up.",
            )
        if not sign_in_csrf_matches(request, form):
            return refused_page(request, None)
        pending = await run_in_threadpool(begin_oidc_sign_in, db, safe_next(form_text(form, "next")))
        try:
            url = await oidc.authorization_url(
                state=pending.state, nonce=pending.nonce, code_verifier=pending.code_verifier
            )
        except OidcError as exc:
            log.warning("oidc provider unusable", reason=str(exc))
            return message_page(
                request,
                title="Sign-in unavailable",
                status=502,
                message=f"{settings.oidc_provider_name} cannot be reached right now. "
                "Try again later, or sign in with your name and password.",
            )
        response = RedirectResponse(url, status_code=303)
        set_cookie(request, response, OIDC_BINDING_COOKIE, pending.binding, OIDC_BINDING_LIFETIME_SECONDS)
        return response

    @router.get("/oidc/callback")
    async def oidc_callback(request: Request, db: Session = Depends(db_session)) -> Response:
        if oidc is None:
            return message_page(
                request,
                title="Not available",
                status=404,
                message="Sign-in through another account is not set up.",
            )
        pending = await run_in_threadpool(take_oidc_sign_in, db, request.cookies.get(OIDC_BINDING_COOKIE))
        state = request.query_params.get("state", "")
        code = request.query_params.get("code", "")
        failed = None
        if pending is None or not state or state != pending.state:
            failed = "This sign-in was not started in this browser, or it took too long."
        elif request.query_params.get("error") or not code or len(code) > 2048:
            failed = f"{settings.oidc_provider_name} did not sign you in."
        if failed is not None or pending is None:
            response: Response = message_page(
                request,
                title="Not signed in",
                status=400,
                message=f"{failed} Start again from the sign-in page.",
            )
            clear_cookie(request, response, OIDC_BINDING_COOKIE)
            return response
        try:
            identity = await oidc.redeem(code=code, code_verifier=pending.code_verifier, nonce=pending.nonce)
        except OidcError as exc:
            log.warning("oidc sign-in refused", reason=str(exc))
            response = message_page(
                request,
                title="Not signed in",
                status=401,
                message=f"{settings.oidc_provider_name} could not confirm who you are. Start again from the sign-in page.",
            )
            clear_cookie(request, response, OIDC_BINDING_COOKIE)
            return response

        def signed_in() -> Response:  # the database, off the event loop
            citizen = citizen_for_oidc(db, identity.issuer, identity.subject, display_name=identity.name)
            return _signed_in_response(request, db, citizen.id, pending.next_path)

        response = await run_in_threadpool(signed_in)
        clear_cookie(request, response, OIDC_BINDING_COOKIE)
        return response

    return router
