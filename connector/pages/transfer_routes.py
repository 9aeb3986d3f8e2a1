"""``/ui/transfers``: transfers, their steps, and the files pushed into this connector's sink.

An operator's step is a POST form with the session's CSRF token to
``/ui/transfers/{id}/{action}``. It runs ``connector.transfers.operator_action``
(exactly what the Management API runs), kicks the transfer worker, and
redirects back (303) to the transfer, whose page then confirms the step in a
``role="status"`` region. A refused step shows the connector's reason in
``role="alert"``, and nothing changes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.datastructures import FormData

from connector.dataplane.sink import read_sink, sink_dir
from connector.pages.auth import CSRF_FIELD, LOGIN_PATH, session_token, signed_in, signer_for
from connector.pages.render import PAGE_HEADERS, not_found_page, page, refused_page
from connector.pages.transfers_view import (
    KIND_WORDS,
    MAX_REASON_LENGTH,
    PAGE_ACTIONS,
    ROLE_WORDS,
    STATES,
    TransferFilter,
    confirmation,
    received_files,
    transfer_detail,
    transfer_page,
    transfer_url,
    waiting_sinks,
)
from connector.transfer_models import TransferRow
from connector.transfers import INITIAL, TransferError, get_transfer, operator_action
from runtime.dependencies import db_session, service_core
from runtime.forms import read_form


def _transfer_page(
    request: Request,
    session: Session,
    row: TransferRow,
    csrf: str,
    *,
    status: int = 200,
    done: str | None = None,
    error: str | None = None,
    reason: str = "",
) -> HTMLResponse:
    settings = service_core(request).settings
    detail = transfer_detail(session, row, settings.data_dir, settings.public_url)
    heading = f"Transfer of {detail.summary.dataset} with {detail.summary.party}"
    return page(
        request,
        "transfer.html",
        title=heading if error is None else f"{heading}: not done",
        status=status,
        csrf_token=csrf,
        section="transfers",
        heading=heading,
        detail=detail,
        role_words=ROLE_WORDS,
        kind_words=KIND_WORDS,
        confirmation=confirmation(done, row) if done else None,
        error=error,
        reason=reason,
        max_reason=MAX_REASON_LENGTH,
    )


def _received_file(data_dir: Path, sink_id: str) -> Path | None:
    """A complete pushed file, only if it lies in this connector's sink directory."""
    record = read_sink(data_dir, sink_id)
    if record is None or record.state != "received" or record.received_path is None:
        return None
    path = record.received_path.resolve()
    if path.parent != sink_dir(data_dir).resolve() or not path.is_file():
        return None
    return path


def transfer_pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/transfers")
    def transfers(
        request: Request, csrf: str = Depends(signed_in), session: Session = Depends(db_session)
    ) -> Response:
        form = TransferFilter.from_query(dict(request.query_params))
        data_dir = service_core(request).settings.data_dir
        return page(
            request,
            "transfers.html",
            title="Transfers" + (f" (page {form.page})" if form.page > 1 else ""),
            csrf_token=csrf,
            section="transfers",
            form=form,
            found=transfer_page(session, form),
            states=STATES,
            role_words=ROLE_WORDS,
            received=received_files(data_dir),
            waiting=waiting_sinks(data_dir),
            sink_path=str(sink_dir(data_dir)),
        )

    # Before the transfer's page: "received" is not a transfer id.
    @router.get("/transfers/received/{sink_id}")
    def received(sink_id: str, request: Request, csrf: str = Depends(signed_in)) -> Response:
        path = _received_file(service_core(request).settings.data_dir, sink_id)
        if path is None:
            return not_found_page(request, csrf, "transfers", "No file was pushed into that sink.")
        headers = {**PAGE_HEADERS, "Content-Security-Policy": "default-src 'none'; sandbox"}
        return FileResponse(path, filename=path.name, headers=headers, media_type="application/octet-stream")

    @router.get("/transfers/{transfer_id}")
    def transfer(
        transfer_id: str,
        request: Request,
        csrf: str = Depends(signed_in),
        session: Session = Depends(db_session),
    ) -> Response:
        row = get_transfer(session, transfer_id)
        if row is None:
            return not_found_page(
                request, csrf, "transfers", f"This connector has no transfer {transfer_id}."
            )
        return _transfer_page(request, session, row, csrf, done=request.query_params.get("done"))

    @router.post("/transfers/{transfer_id}/{action}")
    def act(
        transfer_id: str,
        action: str,
        request: Request,
        session: Session = Depends(db_session),
        form: FormData = Depends(read_form),
    ) -> Response:
        # A plain function: FastAPI runs it in a worker thread, off the event loop.
        token, signer = session_token(request), signer_for(request)
        back = transfer_url(transfer_id)
        if token is None or signer is None:
            return RedirectResponse(f"{LOGIN_PATH}?next={quote(back, safe='')}", status_code=303)
        csrf = signer.csrf_for(token)
        supplied = form.get(CSRF_FIELD)
        if not signer.csrf_matches(token, supplied if isinstance(supplied, str) else None):
            return refused_page(request, csrf)
        row = get_transfer(session, transfer_id)
        if row is None:
            return not_found_page(
                request, csrf, "transfers", f"This connector has no transfer {transfer_id}."
            )
        if action not in PAGE_ACTIONS:
            return not_found_page(request, csrf, "transfers", f"There is no step {action!r}.")
        reason = str(form.get("reason", "")).strip()[:MAX_REASON_LENGTH] if action == "terminate" else ""
        done = "withdrawn" if action == "terminate" and row.state == INITIAL else action
        try:
            operator_action(session, service_core(request), row, action, reason or None)
        except TransferError as exc:
            session.rollback()
            fresh = get_transfer(session, transfer_id) or row
            return _transfer_page(
                request, session, fresh, csrf, status=exc.status, error=exc.reason, reason=reason
            )
        worker = request.app.state.transfer_worker
        return RedirectResponse(
            f"{back}?done={done}", status_code=303, background=BackgroundTask(worker.kick, row.id)
        )

    return router
