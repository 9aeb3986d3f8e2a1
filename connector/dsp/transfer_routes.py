"""DSP 2025-1 transfer process endpoints, both roles.

Provider endpoints and consumer callbacks share paths (``/transfers/{pid}/start``
serves a provider's start for the consumer and a consumer's resume for the
provider): the pid says which of our transfers, and so which role, a message
is for. A pid that is unknown or belongs to another counter-party is a 404;
a message the state machine does not allow now is a 400 (the binding's
"invalid state transition"); every other refusal is a 4xx too, with a
``TransferError`` body, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from connector import transfer_evidence as evidence
from connector.dsp import transfer_messages as wire
from connector.dsp.errors import DspError
from connector.dsp.messages import DspMessageError, normalise
from connector.transfer_models import TransferRow
from connector.transfer_states import Message, Role
from connector.transfers import (
    INITIAL,
    PUSH,
    TransferError,
    dsp_state,
    find_by_pid,
    flow_of,
    provider_receive_request,
    receive,
    settle,
)
from identity.peer_auth import Peer, authenticated_peer
from runtime.dependencies import db_session, service_core
from runtime.requests import BodyError, read_json
from runtime.settings import DSP_PATH

MAX_MESSAGE_BYTES = 256 * 1024
ERROR_TYPE = "TransferError"


def _error(status: int, reason: str, provider_pid: Any = None, consumer_pid: Any = None) -> DspError:
    # The error schema requires both pids; where one is not known, say so rather than leave it out.
    return DspError(
        status,
        ERROR_TYPE,
        [reason],
        providerPid=provider_pid if isinstance(provider_pid, str) else "unknown",
        consumerPid=consumer_pid if isinstance(consumer_pid, str) else "unknown",
    )


async def _message(request: Request, kind: Message) -> dict[str, Any]:
    try:
        body = await read_json(request, max_bytes=MAX_MESSAGE_BYTES)
    except BodyError as exc:
        raise _error(exc.status, exc.message) from None
    pids = body if isinstance(body, dict) else {}
    try:
        return normalise(body, kind.value, wire.SCHEMA_OF[kind])
    except DspMessageError as exc:
        raise _error(
            400, "; ".join(exc.reasons[:5]), pids.get("providerPid"), pids.get("consumerPid")
        ) from None


def _kick(request: Request, row: TransferRow) -> BackgroundTask | None:
    """After the answer is sent, deliver the message (or signed statements) this step queued, if any."""
    if row.pending_message is None and row.statements_outbox is None:
        return None
    return BackgroundTask(request.app.state.transfer_worker.kick, row.id)


def _state_object(row: TransferRow) -> dict[str, Any]:
    return wire.transfer_object(row.provider_pid or "", row.consumer_pid or "", dsp_state(row))


def _log_refusal(
    session: Session, peer: Peer, exc: TransferError, message: dict[str, Any], kind: Message
) -> None:
    """A message from an authenticated member that we refused goes into the transfer log."""
    row = exc.row
    agreement = row.agreement_id if row is not None else message.get("agreementId")
    evidence.refused(
        session,
        counter_party=peer.did,
        role=row.role if row is not None else Role.PROVIDER.value,
        reason=exc.reason,
        code=f"dsp.{kind.value}",
        transfer_id=row.id if row is not None else None,
        agreement_id=agreement if isinstance(agreement, str) else None,
        dataset=row.asset_id if row is not None else None,
    )
    session.commit()


def transfer_router() -> APIRouter:
    router = APIRouter(prefix=f"{DSP_PATH}/transfers", tags=["dsp transfer"])

    def handle(kind: Message) -> Callable[..., Any]:
        async def endpoint(
            pid: str,
            request: Request,
            peer: Peer = Depends(authenticated_peer),
            session: Session = Depends(db_session),
        ) -> Response:
            message = await _message(request, kind)
            core = service_core(request)

            def apply() -> TransferRow:
                row = settle(session, find_by_pid(session, pid, peer.did), kind)
                if (
                    row.role == Role.CONSUMER.value
                    and row.provider_pid is None
                    and row.state != INITIAL
                    and message.get("consumerPid") == row.consumer_pid
                    and len(str(message.get("providerPid"))) <= 256
                ):
                    # The provider acknowledged our request without a body: its first message names its pid.
                    row.provider_pid = message.get("providerPid")
                if (message.get("providerPid"), message.get("consumerPid")) != (
                    row.provider_pid,
                    row.consumer_pid,
                ):
                    raise TransferError(
                        400, "the message's providerPid and consumerPid do not match this transfer", row
                    )
                receive(session, core, row, kind, message)
                return row

            try:
                row = await run_in_threadpool(apply)
            except TransferError as exc:
                session.rollback()
                if exc.row is not None:
                    await run_in_threadpool(_log_refusal, session, peer, exc, message, kind)
                raise _error(
                    exc.status, exc.reason, message.get("providerPid"), message.get("consumerPid")
                ) from None
            if kind is Message.START and row.role == Role.PROVIDER.value and flow_of(row) == PUSH:
                # The consumer resumed a push transfer: the data is pushed again, from the start.
                worker = request.app.state.transfer_worker
                return Response(status_code=200, background=BackgroundTask(worker.push_soon, row.id))
            return Response(status_code=200, background=_kick(request, row))

        return endpoint

    @router.post("/request", status_code=201)
    async def initial_request(
        request: Request, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        message = await _message(request, Message.REQUEST)
        core = service_core(request)
        try:
            row = await run_in_threadpool(provider_receive_request, session, core, peer, message)
        except TransferError as exc:
            session.rollback()
            await run_in_threadpool(_log_refusal, session, peer, exc, message, Message.REQUEST)
            raise _error(exc.status, exc.reason, None, message.get("consumerPid")) from None
        return JSONResponse(_state_object(row), status_code=201, background=_kick(request, row))

    @router.get("/{pid}")
    def state(
        pid: str, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        try:
            row = find_by_pid(session, pid, peer.did)
        except TransferError as exc:
            raise _error(exc.status, exc.reason) from None
        return JSONResponse(_state_object(row))

    router.add_api_route("/{pid}/start", handle(Message.START), methods=["POST"])
    router.add_api_route("/{pid}/completion", handle(Message.COMPLETION), methods=["POST"])
    router.add_api_route("/{pid}/termination", handle(Message.TERMINATION), methods=["POST"])
    router.add_api_route("/{pid}/suspension", handle(Message.SUSPENSION), methods=["POST"])
    return router
