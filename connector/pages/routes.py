"""``/ui``: the operator pages — sign-in, assets and offers, the marketplace, negotiations, agreements, transfers.

Server-rendered HTML that works without JavaScript. Every page but sign-in
needs a session (else it redirects to ``/ui/login``); every form that changes
state carries a CSRF token and is refused (403) without the right one.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from catalog.assets import get_asset
from connector.pages.assets_view import asset_detail, asset_rows
from connector.pages.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    LOGIN_CSRF_LIFETIME_SECONDS,
    LOGIN_PATH,
    SESSION_COOKIE,
    UI_PATH,
    api_key_matches,
    clear_cookie,
    login_csrf,
    login_csrf_matches,
    safe_next,
    session_token,
    set_cookie,
    signed_in,
    signer_for,
)
from connector.pages.marketplace_view import (
    SearchForm,
    cached_dataset,
    dataset_url,
    formats_of,
    offers_of,
    search,
)
from connector.pages.negotiation_routes import negotiation_pages_router
from connector.pages.render import not_found_page, page, refused_page, stylesheet
from connector.pages.transfer_log_view import transfer_log_page_router
from connector.pages.transfer_routes import transfer_pages_router
from runtime.dependencies import db_session, service_core
from runtime.forms import read_form
from runtime.ratelimit import SharedAttemptLimiter, client_address

SIGN_IN_ATTEMPTS = 10
SIGN_IN_WINDOW_SECONDS = 60.0
MAX_PAGE = 100_000


def _login_page(
    request: Request,
    *,
    next_path: str,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    token = login_csrf(request)
    response = page(
        request,
        "login.html",
        title="Sign in" if error is None else "Sign in: not signed in",
        status=status,
        headers=headers,
        login_csrf=token,
        next_path=next_path,
        error=error,
        notice=notice,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, LOGIN_CSRF_LIFETIME_SECONDS)
    return response


def _page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    return min(max(int(text), 1), MAX_PAGE) if text.isdigit() and len(text) < 7 else 1


def pages_router() -> APIRouter:
    router = APIRouter(prefix=UI_PATH, include_in_schema=False)
    limiter = SharedAttemptLimiter("operator-pages", SIGN_IN_ATTEMPTS, SIGN_IN_WINDOW_SECONDS)

    @router.get("/static/pages.css")
    def css() -> Response:
        return Response(
            stylesheet(),
            media_type="text/css",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/login")
    def login_form(request: Request) -> Response:
        next_path = safe_next(request.query_params.get("next"))
        if session_token(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        notice = "You have signed out." if request.query_params.get("signed_out") else None
        return _login_page(request, next_path=next_path, notice=notice)

    @router.post("/login")
    async def login(request: Request) -> Response:
        engine = service_core(request).engine
        wait = await run_in_threadpool(limiter.attempt, engine, client_address(request))
        form = await read_form(request)
        next_path = safe_next(str(form.get("next", UI_PATH)))
        if wait is not None:
            seconds = math.ceil(wait)
            return _login_page(
                request,
                next_path=next_path,
                status=429,
                error=f"Too many sign-in attempts from your address. Try again in {seconds} seconds.",
                headers={"Retry-After": str(seconds)},
            )
        if not login_csrf_matches(request, form):
            return refused_page(request, None)
        signer = signer_for(request)
        if signer is None or not api_key_matches(request, str(form.get("api_key", ""))):
            return _login_page(
                request,
                next_path=next_path,
                status=401,
                error="That is not this connector's management API key.",
            )
        response = RedirectResponse(next_path, status_code=303)
        set_cookie(request, response, SESSION_COOKIE, signer.issue(), signer.lifetime)
        clear_cookie(request, response, LOGIN_CSRF_COOKIE)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        token = session_token(request)
        signer = signer_for(request)
        if token is None or signer is None:
            return RedirectResponse(LOGIN_PATH, status_code=303)
        supplied = form.get(CSRF_FIELD)
        if not signer.csrf_matches(token, supplied if isinstance(supplied, str) else None):
            return refused_page(request, signer.csrf_for(token))
        response = RedirectResponse(f"{LOGIN_PATH}?signed_out=true", status_code=303)
        clear_cookie(request, response, SESSION_COOKIE)
        return response

    @router.get("")
    def assets(
        request: Request, csrf: str = Depends(signed_in), session: Session = Depends(db_session)
    ) -> Response:
        number = _page_number(request)
        rows, has_more = asset_rows(session, number)
        return page(
            request,
            "assets.html",
            title="Assets and offers",
            csrf_token=csrf,
            section="assets",
            rows=rows,
            page_number=number,
            has_more=has_more,
        )

    @router.get("/assets/{asset_id:path}")
    def asset(
        asset_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        record = get_asset(session, asset_id)
        if record is None:
            return not_found_page(request, csrf, "assets", f"This connector has no asset {asset_id}.")
        detail = asset_detail(session, record, service_core(request).policy_engine)
        return page(
            request,
            "asset.html",
            title=f"Asset {record.metadata.title or record.id}",
            csrf_token=csrf,
            section="assets",
            detail=detail,
        )

    @router.get("/marketplace")
    def marketplace(
        request: Request, csrf: str = Depends(signed_in), session: Session = Depends(db_session)
    ) -> Response:
        form = SearchForm.from_query(dict(request.query_params))
        results = search(session, form)
        return page(
            request,
            "marketplace.html",
            title="Marketplace" + (f" (page {form.page})" if form.page > 1 else ""),
            csrf_token=csrf,
            section="marketplace",
            form=form,
            results=results,
            dataset_url=dataset_url,
        )

    @router.get("/marketplace/{participant}/{dataset_id:path}")
    def marketplace_dataset(
        participant: str,
        dataset_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        item = cached_dataset(session, participant, dataset_id)
        if item is None:
            return not_found_page(
                request,
                csrf,
                "marketplace",
                f"The federated catalog has no dataset {dataset_id} from {participant}.",
            )
        return page(
            request,
            "marketplace_dataset.html",
            title=f"Dataset {item.title or item.dataset_id}",
            csrf_token=csrf,
            section="marketplace",
            item=item,
            offers=offers_of(item),
            formats=formats_of(item),
        )

    router.include_router(negotiation_pages_router())
    router.include_router(transfer_pages_router())
    router.include_router(transfer_log_page_router())
    return router
