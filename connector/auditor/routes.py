"""``/ui/audit``: the auditor's pages — sign-in, the transfer log timeline, agreements, bundle export.

Read-only: the only forms that post are sign-in and sign-out, which change nothing but the
auditor's own cookie. Every other route is a GET that reads. The pages run one script of
this connector's own (``audit-verify.js``) that checks the log's proofs in the browser;
the Content-Security-Policy allows that script and nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import IO

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlmodel import Session

from connector.auditor.accounts import authenticate
from connector.auditor.auth import (
    AUDIT_LOGIN_PATH,
    AUDIT_PATH,
    SignedInAuditor,
    auditor_signed_in,
    clear_auditor_cookie,
    current_auditor,
    safe_audit_next,
    sessions_for,
    set_auditor_cookie,
)
from connector.auditor.chart import transfer_charts
from connector.auditor.log_view import checkpoint_view, current_checkpoint, entry_views
from connector.auditor.timeline import (
    KIND_GROUPS,
    TimelineFilter,
    choices,
    daily_totals,
    day_start_ms,
    index_facts,
    matching_indexes,
    refresh_index,
    unindexed,
)
from connector.pages.agreements_view import agreement_detail, evidence, evidence_filename
from connector.pages.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    LOGIN_CSRF_LIFETIME_SECONDS,
    login_csrf,
    login_csrf_matches,
    set_cookie,
)
from connector.pages.render import PAGE_HEADERS, page, path_segment
from connector.translog.checkpoint import CheckpointError
from connector.translog.management import export_bundle_file
from contracts.agreements import get_agreement
from contracts.evidence import EvidenceError
from contracts.models import NegotiationRow
from runtime.dependencies import db_session, service_core
from runtime.forms import read_form
from runtime.ratelimit import SharedAttemptLimiter, client_address

SIGN_IN_ATTEMPTS = 10
SIGN_IN_WINDOW_SECONDS = 60.0
# The audit pages run our own verification script; nothing else (no inline script, no other origin).
AUDIT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
AUDIT_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": AUDIT_CSP}
BUNDLE_MEDIA_TYPE = "application/zip"
CHUNK = 64 * 1024
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@cache
def verifier_script() -> bytes:
    return (resources.files("connector.auditor") / "static" / "audit-verify.js").read_bytes()


def audit_page(
    request: Request,
    template: str,
    *,
    title: str,
    auditor: SignedInAuditor | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: object,
) -> HTMLResponse:
    return page(
        request,
        template,
        title=title,
        status=status,
        csrf_token=auditor.csrf_token if auditor else None,
        section="log",
        headers={**AUDIT_HEADERS, **(headers or {})},
        auditor=auditor.name if auditor else "",
        **context,
    )


def message_page(
    request: Request, auditor: SignedInAuditor | None, status: int, heading: str, message: str
) -> HTMLResponse:
    return audit_page(
        request,
        "audit_message.html",
        title=heading,
        auditor=auditor,
        status=status,
        heading=heading,
        message=message,
    )


def _login_page(
    request: Request,
    *,
    next_path: str,
    name: str = "",
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    token = login_csrf(request)
    response = audit_page(
        request,
        "audit_login.html",
        title="Auditor sign-in" if error is None else "Auditor sign-in: not signed in",
        auditor=None,
        status=status,
        headers=headers,
        login_csrf=token,
        next_path=next_path,
        name=name,
        error=error,
        notice=notice,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, LOGIN_CSRF_LIFETIME_SECONDS)
    return response


def _utc_today() -> datetime:
    return datetime.now(UTC)


def _bundle_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(CHUNK):
            yield chunk
    finally:
        spool.close()


def audit_router() -> APIRouter:
    router = APIRouter(prefix=AUDIT_PATH, include_in_schema=False)
    limiter = SharedAttemptLimiter("auditor-pages", SIGN_IN_ATTEMPTS, SIGN_IN_WINDOW_SECONDS)

    @router.get("/static/audit-verify.js")
    def script() -> Response:
        return Response(
            verifier_script(),
            media_type="text/javascript",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/login")
    def login_form(request: Request) -> Response:
        next_path = safe_audit_next(request.query_params.get("next"))
        if current_auditor(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        notice = "You have signed out." if request.query_params.get("signed_out") else None
        return _login_page(request, next_path=next_path, notice=notice)

    @router.post("/login")
    async def login(request: Request) -> Response:
        wait = await run_in_threadpool(limiter.attempt, service_core(request).engine, client_address(request))
        form = await read_form(request)
        next_path = safe_audit_next(str(form.get("next", AUDIT_PATH)))
        name = str(form.get("name", ""))[:64]
        if wait is not None:
            seconds = math.ceil(wait)
            return _login_page(
                request,
                next_path=next_path,
                name=name,
                status=429,
                error=f"Too many sign-in attempts from your address. Try again in {seconds} seconds.",
                headers={"Retry-After": str(seconds)},
            )
        if not login_csrf_matches(request, form):
            return message_page(
                request,
                None,
                403,
                "Request refused",
                "The form was missing its security token or the token was wrong. Reload the page and try again.",
            )
        engine = service_core(request).engine
        account = await run_in_threadpool(authenticate, engine, name, str(form.get("password", "")))
        if account is None:
            return _login_page(
                request,
                next_path=next_path,
                name=name,
                status=401,
                error="That name and password are not an auditor account of this connector.",
            )
        sessions = sessions_for(request)
        response = RedirectResponse(next_path, status_code=303)
        set_auditor_cookie(
            request, response, sessions.issue(account.name, account.session_salt), sessions.lifetime
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        auditor = current_auditor(request)
        if auditor is None:
            return RedirectResponse(AUDIT_LOGIN_PATH, status_code=303)
        supplied = form.get(CSRF_FIELD)
        if not sessions_for(request).csrf_matches(
            auditor.session_token, supplied if isinstance(supplied, str) else None
        ):
            return message_page(
                request, auditor, 403, "Request refused", "The form's security token was wrong."
            )
        response = RedirectResponse(f"{AUDIT_LOGIN_PATH}?signed_out=true", status_code=303)
        clear_auditor_cookie(request, response)
        return response

    @router.get("")
    def timeline(request: Request, auditor: SignedInAuditor = Depends(auditor_signed_in)) -> Response:
        core = service_core(request)
        wanted, errors = TimelineFilter.from_query(dict(request.query_params))
        refresh_index(core.engine)
        signed, problem = current_checkpoint(core)
        checkpoint = (
            checkpoint_view(core, signed) if signed is not None and signed.checkpoint.size > 0 else None
        )
        today = _utc_today().date()
        with core.engine.connect() as conn:
            indexes, has_more = matching_indexes(conn, wanted)
            entries = entry_views(
                conn, indexes, index_facts(conn, indexes), checkpoint.size if checkpoint else 0
            )
            parties, datasets = choices(conn)
            totals = daily_totals(conn, wanted, today)
            pending = unindexed(conn)
        title = "Transfer log" + (f" (page {wanted.page})" if wanted.page > 1 else "")
        return audit_page(
            request,
            "audit_timeline.html",
            title=title if not errors else f"{title}: check the filter",
            auditor=auditor,
            status=400 if errors else 200,
            filter=wanted,
            errors=errors,
            kind_groups=KIND_GROUPS,
            parties=parties,
            datasets=datasets,
            checkpoint=checkpoint,
            checkpoint_problem=problem,
            entries=entries,
            has_more=has_more,
            totals=totals,
            pending=pending,
            charts=transfer_charts(totals),
            export_from=(wanted.date_from or today - timedelta(days=29)).isoformat(),
            export_to=(wanted.date_to or today).isoformat(),
        )

    @router.get("/agreements/{agreement_id:path}/evidence")
    def agreement_evidence(
        agreement_id: str,
        request: Request,
        auditor: SignedInAuditor = Depends(auditor_signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        record = get_agreement(session, agreement_id)
        if record is None:
            return message_page(
                request, auditor, 404, "Not found", f"This connector has no agreement {agreement_id}."
            )
        try:
            bundle = evidence(session, service_core(request), record)
        except EvidenceError as exc:
            return message_page(
                request, auditor, 409, "No evidence", f"The evidence cannot be exported: {exc}"
            )
        return JSONResponse(
            bundle,
            headers={
                "Content-Disposition": f'attachment; filename="{evidence_filename(record.id)}"',
                "Cache-Control": "no-store",
            },
        )

    @router.get("/agreements/{agreement_id:path}")
    def agreement(
        agreement_id: str,
        request: Request,
        auditor: SignedInAuditor = Depends(auditor_signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        record = get_agreement(session, agreement_id)
        if record is None:
            return message_page(
                request, auditor, 404, "Not found", f"This connector has no agreement {agreement_id}."
            )
        stored = session.get(NegotiationRow, record.negotiation_id) is not None
        detail = agreement_detail(session, service_core(request), record, stored)
        return audit_page(
            request,
            "audit_agreement.html",
            title=f"Agreement for {record.asset_id}",
            auditor=auditor,
            detail=detail,
            evidence_url=f"{AUDIT_PATH}/agreements/{path_segment(record.id)}/evidence",
        )

    @router.get("/export")
    def export(request: Request, auditor: SignedInAuditor = Depends(auditor_signed_in)) -> Response:
        first, last = request.query_params.get("from", ""), request.query_params.get("to", "")
        try:
            if not (_DAY.match(first) and _DAY.match(last)):
                raise ValueError
            start, end = datetime.fromisoformat(first).date(), datetime.fromisoformat(last).date()
        except ValueError:
            return message_page(
                request,
                auditor,
                400,
                "Check the dates",
                "Give the first and last day as dates like 2026-11-21.",
            )
        if start > end:
            return message_page(
                request, auditor, 400, "Check the dates", "The first day is after the last day."
            )
        try:
            spool = export_bundle_file(
                service_core(request), day_start_ms(start), day_start_ms(end + timedelta(days=1)) - 1
            )
        except CheckpointError as exc:
            return message_page(request, auditor, 409, "No bundle", f"The log cannot be exported: {exc}")
        filename = f"transfer-log-{start.isoformat()}-to-{end.isoformat()}.zip"
        return StreamingResponse(
            _bundle_chunks(spool),
            media_type=BUNDLE_MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Cache-Control": "no-store",
            },
        )

    return router
