"""The provider's public data endpoint: where a pull transfer's consumer fetches the data.

``GET /public/transfers/{id}`` with ``Authorization: Bearer <data token>`` (or
the bare token, as EDC clients send it). Every request passes
``connector.data_access.authorize`` (token, transfer state, usage control,
the access counted) before the asset's source is opened; refusals are 401
(the token) or 403 (the transfer or the policy), with a JSON body saying why.

Files honour ``Range`` (206; 416 when nothing of the file is selected, 400
when the header does not parse). Personal assets stream through the
personal-data gate, record by record, and are served whole (a byte range
could cut records in half). The body streams: memory stays flat whatever the
size.

``POST /public/token`` refreshes a token pair (``grant_type=refresh_token``,
``refresh_token``), authenticated as the consumer by its peer token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from catalog.assets import AssetRecord
from catalog.dcat import validate_metadata
from connector.consent_gate import LIVE_FLUSH_SECONDS, batch_size_for, open_release, report_release
from connector.data_access import AccessDenied, add_bytes, authorize, refresh, uncount
from connector.dataplane.gate import (
    CLOSED_GATE_REASON,
    ClosedGate,
    GateContext,
    GateFailure,
    PersonalDataGate,
)
from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.sources import (
    RangeError,
    RangeNotSatisfiable,
    Source,
    SourceConfig,
    SourceError,
    open_source,
    parse_range,
)
from connector.transfer_models import TransferRow
from connector.transfer_states import Message
from connector.transfers import PUBLIC_PATH, TOKEN_PATH, end_by_provider
from identity.peer_auth import Peer, authenticated_peer
from runtime.dependencies import db_session, service_core
from runtime.logging import get_logger
from runtime.service import ServiceCore

log = get_logger("tessera.dataplane")


def _refusal(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message}, status_code=status, headers=headers)


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else header.strip()


def personal_gate(request: Request) -> PersonalDataGate:
    """The gate personal records pass (the consent service's client once configured; closed until then)."""
    gate = getattr(request.app.state, "personal_gate", None)
    return gate if gate is not None else ClosedGate()


def source_config(core: ServiceCore) -> SourceConfig:
    return SourceConfig.for_data_dir(core.settings.data_dir)


class _Counted:
    """Counts the bytes that left, and records them (and why a stream stopped) when it ends."""

    def __init__(self, engine: Engine, transfer_id: str) -> None:
        self.engine = engine
        self.transfer_id = transfer_id
        self.sent = 0

    def record(self, note: str | None = None) -> None:
        with Session(self.engine) as session:
            add_bytes(session, self.transfer_id, self.sent, note)


def _gated(
    request: Request, core: ServiceCore, transfer: TransferRow, asset: AssetRecord, source: Source
) -> tuple[GatedStream, bool]:
    meta = validate_metadata(asset.properties)
    gate = open_release(personal_gate(request))  # consent: answers reused within this release only
    context = GateContext(
        controller=core.settings.did,
        recipient=transfer.counter_party_did,
        purpose=transfer.purpose or "",  # the consent gate checks that the agreement binds it
        dataset_id=asset.id,
        transfer_id=transfer.id,
    )
    stream = GatedStream(
        gate,
        context,
        media_type=source.media_type,
        subject_field=meta.subject_field or "",
        flush_after=LIVE_FLUSH_SECONDS if source.live else None,  # a live record waits at most this long
        batch_size=batch_size_for(gate),
    )
    return stream, isinstance(gate, ClosedGate)


def _end_after_gate_failure(engine: Engine, transfer_id: str, reason: str) -> bool:
    with Session(engine) as session:
        row = session.get(TransferRow, transfer_id, with_for_update=True)
        if row is None:
            return False
        return end_by_provider(
            session, row, Message.TERMINATION, "personal-data", f"the personal-data gate stopped it: {reason}"
        )


def public_router() -> APIRouter:
    router = APIRouter(tags=["data plane"])

    @router.get(PUBLIC_PATH + "/{transfer_id}")
    async def fetch(transfer_id: str, request: Request, session: Session = Depends(db_session)) -> Response:
        token = _token_of(request)
        if token is None:
            return _refusal(401, "missing", "the request needs the transfer's data token (Authorization)")
        core = service_core(request)
        worker = request.app.state.transfer_worker
        try:
            access = await run_in_threadpool(authorize, session, core, transfer_id, token)
        except AccessDenied as exc:
            if exc.ended:
                await worker.kick(transfer_id)
            return _refusal(exc.status, exc.reason, exc.message)
        try:
            source = await open_source(access.asset.data_address, source_config(core))
        except SourceError as exc:
            await run_in_threadpool(uncount, session, transfer_id)
            return _refusal(exc.status, "source", str(exc))
        personal = bool(validate_metadata(access.asset.properties).personal)
        byte_range = None
        headers: dict[str, str] = {}
        if source.supports_ranges and source.size is not None and not personal:
            headers["Accept-Ranges"] = "bytes"
            try:
                byte_range = parse_range(request.headers.get("range"), source.size)
            except RangeError as exc:
                await source.aclose()
                await run_in_threadpool(uncount, session, transfer_id)
                extra = {"Content-Range": exc.content_range} if isinstance(exc, RangeNotSatisfiable) else None
                return _refusal(exc.status, "range", str(exc), extra)
            length = byte_range.length if byte_range is not None else source.size
            headers["Content-Length"] = str(length)
            if byte_range is not None:
                headers["Content-Range"] = byte_range.content_range(source.size)
        counted = _Counted(core.engine, transfer_id)
        gated: GatedStream | None = None
        closed_gate = False
        if personal:
            try:
                gated, closed_gate = _gated(request, core, access.transfer, access.asset, source)
            except GateFailure as exc:
                await source.aclose()
                if await run_in_threadpool(_end_after_gate_failure, core.engine, transfer_id, exc.reason):
                    await worker.kick(transfer_id)
                return _refusal(403, "personal-data", f"the personal-data gate refused: {exc.reason}")

        async def body() -> AsyncIterator[bytes]:
            note: str | None = None
            chunks = source.chunks(byte_range)
            try:
                stream = gated.filter(chunks) if gated is not None else chunks
                async for chunk in stream:
                    counted.sent += len(chunk)
                    yield chunk
                if gated is not None and gated.counters.withheld:
                    why = CLOSED_GATE_REASON if closed_gate else "the gate did not admit their subjects"
                    note = f"{gated.counters.withheld} personal record(s) withheld: {why}"
            except GateFailure as exc:
                note = f"the personal-data gate stopped the stream: {exc.reason}"
                if await run_in_threadpool(_end_after_gate_failure, core.engine, transfer_id, exc.reason):
                    await worker.kick(transfer_id)
            except SourceError as exc:
                note = f"the source failed while streaming: {exc}"
                log.warning("source failed mid-stream", transfer=transfer_id, error=str(exc))
                raise
            finally:
                await source.aclose()
                await run_in_threadpool(counted.record, note)
                if gated is not None:
                    report_release(gated)  # the citizens' "who received my data" (consent service)

        status = 206 if byte_range is not None else 200
        return StreamingResponse(body(), status_code=status, media_type=source.media_type, headers=headers)

    @router.post(TOKEN_PATH)
    async def refresh_token(
        request: Request, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        fields: dict[str, Any] = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            fields.update({k: v for k, v in (await request.form()).items() if isinstance(v, str)})
        if fields.get("grant_type") != "refresh_token" or not isinstance(fields.get("refresh_token"), str):
            return _refusal(400, "invalid_request", "send grant_type=refresh_token and refresh_token")
        core = service_core(request)
        try:
            properties = await run_in_threadpool(refresh, session, core, peer.did, fields["refresh_token"])
        except AccessDenied as exc:
            return _refusal(exc.status, exc.reason, exc.message)
        return JSONResponse(
            {
                "access_token": properties["authorization"],
                "refresh_token": properties["refreshToken"],
                "expires_in": int(properties["expiresIn"]),
                "token_type": "bearer",
            }
        )

    return router
