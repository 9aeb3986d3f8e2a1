"""The transfer log in the Management API (``X-Api-Key``): everything in full, for the operator and auditors.

``/management/v3/transferlog``: ``checkpoint``, ``entries?start=&end=``,
``proof/inclusion?index=|leafHash=&size=``, ``proof/consistency?first=&second=``,
``export?from=&to=`` (an audit bundle, zip), ``alerts`` (members' logs seen to misbehave),
``witnessed`` (the members' logs we witness) and ``POST witness`` (a witnessing round now).
"""

from __future__ import annotations

import base64
import tempfile
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlmodel import Session

from connector.management.auth import require_api_key
from connector.translog.bundle import write_bundle
from connector.translog.checkpoint import CheckpointError
from connector.translog.routes import (
    NOTE_MEDIA_TYPE,
    LogRequestError,
    consistency_answer,
    current_checkpoint_note,
    entries_page,
    inclusion_answer,
    required_number,
)
from connector.translog.times import TimeError, parse_time
from connector.translog.witness import LogWitness, list_alerts, list_witnessed
from identity.did import dsp_services
from runtime.dependencies import service_core
from runtime.service import ServiceCore


def export_bundle_file(core: ServiceCore, from_ms: int, to_ms: int) -> Any:
    """An audit bundle in a temporary file (rewound), for the export endpoint and the auditor page."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - handed to the response
    settings = core.settings
    write_bundle(
        core.engine,
        settings.did,
        core.key,
        from_ms,
        to_ms,
        spool,
        services=dsp_services(settings.did, settings.public_url, settings.dsp_url),
    )
    spool.seek(0)
    return spool


def _time_param(request: Request, name: str, default: int, *, end_of_day: bool = False) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return parse_time(text, end_of_day=end_of_day)
    except TimeError as exc:
        raise LogRequestError(400, str(exc), name) from None


def transfer_log_management_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/transferlog", tags=["transfer log"], dependencies=[Depends(require_api_key)]
    )

    @router.get("/checkpoint")
    def checkpoint(request: Request) -> PlainTextResponse:
        try:
            return PlainTextResponse(
                current_checkpoint_note(service_core(request)), media_type=NOTE_MEDIA_TYPE
            )
        except CheckpointError as exc:
            raise LogRequestError(503, str(exc)) from None

    @router.get("/entries")
    def entries(request: Request) -> JSONResponse:
        start, end = required_number(request, "start"), required_number(request, "end")
        with Session(service_core(request).engine) as session:
            return JSONResponse(entries_page(session, start, end, None))

    @router.get("/proof/inclusion")
    def inclusion(request: Request) -> JSONResponse:
        with Session(service_core(request).engine) as session:
            return JSONResponse(inclusion_answer(session, request))

    @router.get("/proof/consistency")
    def consistency(request: Request) -> JSONResponse:
        with Session(service_core(request).engine) as session:
            return JSONResponse(consistency_answer(session, request))

    @router.get("/export")
    async def export(request: Request) -> StreamingResponse:
        now = int(time.time() * 1000)
        from_ms = _time_param(request, "from", 0)
        to_ms = _time_param(request, "to", now, end_of_day=True)
        if from_ms > to_ms:
            raise LogRequestError(400, "from is after to", "from")
        core = service_core(request)
        try:
            spool = await run_in_threadpool(export_bundle_file, core, from_ms, to_ms)
        except CheckpointError as exc:
            raise LogRequestError(503, str(exc)) from None

        def chunks() -> Any:
            with spool:
                while chunk := spool.read(256 * 1024):
                    yield chunk

        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="transfer-log-bundle.zip"'},
        )

    @router.get("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        rows = await run_in_threadpool(list_alerts, service_core(request).engine)
        return JSONResponse(
            [
                {
                    "id": r.id,
                    "member": r.member_did,
                    "kind": r.kind,
                    "detail": r.detail,
                    "previousCheckpoint": r.previous_note,
                    "newCheckpoint": r.new_note,
                    "createdAt": r.created_at,
                }
                for r in rows
            ]
        )

    @router.get("/witnessed")
    async def witnessed(request: Request) -> JSONResponse:
        rows = await run_in_threadpool(list_witnessed, service_core(request).engine)
        return JSONResponse(
            [
                {
                    "member": r.member_did,
                    "size": r.size,
                    "root": base64.b64encode(r.root).decode(),
                    "checkedAt": r.checked_at,
                    "lastError": r.last_error,
                }
                for r in rows
            ]
        )

    @router.post("/witness")
    async def witness_now(request: Request) -> JSONResponse:
        log_witness: LogWitness = request.app.state.log_witness
        results = await log_witness.witness_now()
        return JSONResponse(
            [
                {"member": r.member, "status": r.status, "size": r.size, "detail": r.detail}
                for r in results.values()
            ]
        )

    return router
