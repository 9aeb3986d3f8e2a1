"""``/ui/negotiations`` and ``/ui/agreements``: negotiations, their steps, and the signed agreements.

An operator's step is a POST form with the session's CSRF token to
``/ui/negotiations/{id}/{action}``. It runs ``connector.negotiations.operator_action``
(exactly what the Management API runs), kicks the delivery worker once the
answer is sent, and redirects back (303) to the negotiation, whose page then
confirms the step in a ``role="status"`` region. A refused step shows the
connector's reason in ``role="alert"``, and nothing changes.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.datastructures import FormData

from connector.negotiations import INITIAL, NegotiationError, get_negotiation, operator_action
from connector.pages.agreements_view import (
    agreement_detail,
    agreement_rows,
    evidence,
    evidence_filename,
    page_number,
)
from connector.pages.auth import CSRF_FIELD, LOGIN_PATH, session_token, signed_in, signer_for
from connector.pages.negotiations_view import (
    MAX_REASON_LENGTH,
    PAGE_ACTIONS,
    ROLE_WORDS,
    STATE_WORDS,
    STATES,
    NegotiationFilter,
    confirmation,
    negotiation_detail,
    negotiation_page,
    negotiation_url,
    party_label,
)
from connector.pages.render import PAGE_HEADERS, not_found_page, page, refused_page
from contracts.agreements import get_agreement
from contracts.evidence import EvidenceError
from contracts.models import NegotiationRow
from runtime.dependencies import db_session, service_core
from runtime.forms import read_form


def _negotiation_page(
    request: Request,
    session: Session,
    row: NegotiationRow,
    csrf: str,
    *,
    status: int = 200,
    done: str | None = None,
    error: str | None = None,
    reason_error: str | None = None,
    reason: str = "",
) -> HTMLResponse:
    detail = negotiation_detail(session, row)
    heading = f"Negotiation for {detail.summary.dataset} with {detail.summary.party}"
    return page(
        request,
        "negotiation.html",
        title=heading if error is None and reason_error is None else f"{heading}: not done",
        status=status,
        csrf_token=csrf,
        section="negotiations",
        heading=heading,
        detail=detail,
        role_words=ROLE_WORDS,
        confirmation=confirmation(done, row) if done else None,
        error=error,
        reason_error=reason_error,
        reason=reason,
        max_reason=MAX_REASON_LENGTH,
    )


def negotiation_pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/negotiations")
    def negotiations(
        request: Request, csrf: str = Depends(signed_in), session: Session = Depends(db_session)
    ) -> Response:
        form = NegotiationFilter.from_query(dict(request.query_params))
        found = negotiation_page(session, form)
        return page(
            request,
            "negotiations.html",
            title="Negotiations" + (f" (page {form.page})" if form.page > 1 else ""),
            csrf_token=csrf,
            section="negotiations",
            form=form,
            found=found,
            states=STATES,
            state_words=STATE_WORDS,
            role_words=ROLE_WORDS,
        )

    @router.get("/negotiations/{negotiation_id}")
    def negotiation(
        negotiation_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        row = get_negotiation(session, negotiation_id)
        if row is None:
            return not_found_page(
                request, csrf, "negotiations", f"This connector has no negotiation {negotiation_id}."
            )
        return _negotiation_page(request, session, row, csrf, done=request.query_params.get("done"))

    @router.post("/negotiations/{negotiation_id}/{action}")
    def act(
        negotiation_id: str,
        action: str,
        request: Request,
        session: Session = Depends(db_session),
        form: FormData = Depends(read_form),
    ) -> Response:
        # A plain function: FastAPI runs it in a worker thread, off the event loop.
        token, signer = session_token(request), signer_for(request)
        back = negotiation_url(negotiation_id)
        if token is None or signer is None:
            return RedirectResponse(f"{LOGIN_PATH}?next={quote(back, safe='')}", status_code=303)
        csrf = signer.csrf_for(token)
        supplied = form.get(CSRF_FIELD)
        if not signer.csrf_matches(token, supplied if isinstance(supplied, str) else None):
            return refused_page(request, csrf)
        row = get_negotiation(session, negotiation_id)
        if row is None:
            return not_found_page(
                request, csrf, "negotiations", f"This connector has no negotiation {negotiation_id}."
            )
        if action not in PAGE_ACTIONS:
            return not_found_page(request, csrf, "negotiations", f"There is no step {action!r}.")
        body = None
        reason = ""
        if action == "terminate":
            reason = str(form.get("reason", "")).strip()[:MAX_REASON_LENGTH]
            if not reason:
                return _negotiation_page(
                    request,
                    session,
                    row,
                    csrf,
                    status=400,
                    reason_error=f"Give a reason: {party_label(row.counter_party_did)} is told why.",
                )
            body = {"reason": reason}
        done = "withdrawn" if action == "terminate" and row.state == INITIAL else action
        try:
            operator_action(session, service_core(request), row, action, body)
        except NegotiationError as exc:
            session.rollback()
            fresh = get_negotiation(session, negotiation_id) or row
            return _negotiation_page(
                request, session, fresh, csrf, status=exc.status, error=exc.reason, reason=reason
            )
        worker = request.app.state.negotiation_worker
        return RedirectResponse(
            f"{back}?done={done}", status_code=303, background=BackgroundTask(worker.kick, row.id)
        )

    @router.get("/agreements")
    def agreements(
        request: Request, csrf: str = Depends(signed_in), session: Session = Depends(db_session)
    ) -> Response:
        number = page_number(request.query_params.get("page", "1"))
        rows, has_more = agreement_rows(session, number)
        return page(
            request,
            "agreements.html",
            title="Agreements" + (f" (page {number})" if number > 1 else ""),
            csrf_token=csrf,
            section="agreements",
            rows=rows,
            page_number=number,
            has_more=has_more,
        )

    # Before the agreement's page: an agreement id may hold any character, "/" included.
    @router.get("/agreements/{agreement_id:path}/evidence")
    def agreement_evidence(
        agreement_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        record = get_agreement(session, agreement_id)
        if record is None:
            return not_found_page(
                request, csrf, "agreements", f"This connector has no agreement {agreement_id}."
            )
        try:
            bundle = evidence(session, service_core(request), record)
        except EvidenceError as exc:
            return not_found_page(
                request,
                csrf,
                "agreements",
                f"The evidence cannot be exported: {exc}. Add the party to the trust list "
                "(tessera dataspace add).",
                status=409,
                heading="No evidence",
            )
        return Response(
            json.dumps(bundle, indent=2, ensure_ascii=False) + "\n",
            media_type="application/json",
            headers={
                **PAGE_HEADERS,
                "Content-Disposition": f'attachment; filename="{evidence_filename(record.id)}"',
            },
        )

    @router.get("/agreements/{agreement_id:path}")
    def agreement(
        agreement_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        record = get_agreement(session, agreement_id)
        if record is None:
            return not_found_page(
                request, csrf, "agreements", f"This connector has no agreement {agreement_id}."
            )
        detail = agreement_detail(
            session,
            service_core(request),
            record,
            get_negotiation(session, record.negotiation_id) is not None,
        )
        return page(
            request,
            "agreement.html",
            title=f"Agreement for {record.asset_id}",
            csrf_token=csrf,
            section="agreements",
            detail=detail,
        )

    return router
