"""The provider's public data endpoint: where a pull transfer's consumer fetches the data.

``GET /public/transfers/{id}`` with ``Authorization: Bearer <data token>`` (or
the bare token, as EDC clients send it). Every request passes
``connector.data_access.authorize`` (token, transfer state, usage control,
the access counted) before the asset's source is opened; refusals are 401
(the token) or 403 (the transfer or the policy), with a JSON body saying why.

The asset is opened with the data plane's ``open_asset_stream``: files honour
``Range`` (206; 416 when nothing of the file is selected, 400 when the header
does not parse); personal assets stream through the personal-data gate, record
by record, and are served whole; a live source (MQTT) streams until the
transfer stops being STARTED (``TransferStop``). An HttpData upstream gets the
path after the transfer id and the query string where its proxy flags allow.
The body streams: memory stays flat whatever the size.

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

from connector.consent_gate import batch_size_for, open_release, report_release
from connector.data_access import (
    AccessDenied,
    Served,
    TransferStop,
    add_bytes,
    authorize,
    refresh,
    uncount,
)
from connector.dataplane.asset_stream import open_asset_stream
from connector.dataplane.gate import (
    CLOSED_GATE_REASON,
    ClosedGate,
    GateContext,
    GateFailure,
    PersonalDataGate,
)
from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.meter import PayloadMeter
from connector.dataplane.sources import (
    ConsumerRequest,
    RangeError,
    RangeNotSatisfiable,
    SourceConfig,
    SourceError,
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
    """Counts and hashes the bytes that left, and records them (and why a stream stopped) when it ends."""

    def __init__(self, engine: Engine, transfer_id: str, media_type: str) -> None:
        self.engine = engine
        self.transfer_id = transfer_id
        self.meter = PayloadMeter(media_type)

    def record(self, note: str | None = None, gated: GatedStream | None = None) -> None:
        meter = self.meter
        served = Served(meter.sha256, meter.records(gated), gated.counters if gated is not None else None)
        with Session(self.engine) as session:
            add_bytes(session, self.transfer_id, meter.bytes, note, served)


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
    @router.get(PUBLIC_PATH + "/{transfer_id}/{path:path}")
    async def fetch(
        transfer_id: str, request: Request, path: str = "", session: Session = Depends(db_session)
    ) -> Response:
        """The data (``path`` and the query string reach an HttpData upstream where its proxy flags allow)."""
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
        transfer, asset = access.transfer, access.asset
        gate = open_release(personal_gate(request))  # consent: answers reused within this release only
        context = GateContext(
            controller=core.settings.did,
            recipient=transfer.counter_party_did,
            purpose=transfer.purpose or "",  # the consent gate checks that the agreement binds it
            dataset_id=asset.id,
            transfer_id=transfer.id,
        )
        consumer_request = ConsumerRequest(path=path, query=tuple(request.query_params.multi_items()))
        try:
            stream = await open_asset_stream(
                asset,
                source_config(core),
                gate=gate,
                context=context,
                request=consumer_request,
                range_header=request.headers.get("range"),
                stop=TransferStop(core.engine, transfer_id),
                batch_size=batch_size_for(gate),
            )
        except (SourceError, RangeError) as exc:
            await run_in_threadpool(uncount, session, transfer_id)
            kind = "range" if isinstance(exc, RangeError) else "source"
            extra = {"Content-Range": exc.content_range} if isinstance(exc, RangeNotSatisfiable) else None
            return _refusal(exc.status, kind, str(exc), extra)
        except GateFailure as exc:
            if await run_in_threadpool(_end_after_gate_failure, core.engine, transfer_id, exc.reason):
                await worker.kick(transfer_id)
            return _refusal(403, "personal-data", f"the personal-data gate refused: {exc.reason}")
        headers: dict[str, str] = {}
        if stream.source.supports_ranges and stream.gated is None:
            headers["Accept-Ranges"] = "bytes"
        if stream.size is not None:
            headers["Content-Length"] = str(stream.size)
        if stream.content_range is not None:
            headers["Content-Range"] = stream.content_range
        counted = _Counted(core.engine, transfer_id, stream.media_type)
        closed_gate = isinstance(gate, ClosedGate)

        async def body() -> AsyncIterator[bytes]:
            note: str | None = None
            try:
                async for chunk in stream.chunks:
                    counted.meter.update(chunk)
                    yield chunk
                if stream.gated is not None and stream.gated.counters.withheld:
                    why = CLOSED_GATE_REASON if closed_gate else "the gate did not admit their subjects"
                    note = f"{stream.gated.counters.withheld} personal record(s) withheld: {why}"
            except GateFailure as exc:
                note = f"the personal-data gate stopped the stream: {exc.reason}"
                if await run_in_threadpool(_end_after_gate_failure, core.engine, transfer_id, exc.reason):
                    await worker.kick(transfer_id)
            except SourceError as exc:
                note = f"the source failed while streaming: {exc}"
                log.warning("source failed mid-stream", transfer=transfer_id, error=str(exc))
                raise
            finally:
                await stream.aclose()
                await run_in_threadpool(counted.record, note, stream.gated)
                if stream.gated is not None:
                    report_release(stream.gated)  # the citizens' "who received my data" (consent service)

        status = 206 if stream.byte_range is not None else 200
        return StreamingResponse(body(), status_code=status, media_type=stream.media_type, headers=headers)

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
