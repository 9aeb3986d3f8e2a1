"""DSP 2025-1 contract negotiation endpoints, both roles.

Provider endpoints and consumer callbacks share paths (``/negotiations/{pid}/events``
serves both); the pid says which of our negotiations, and so which role, a
message is for. A pid that is unknown or belongs to another counter-party is
a 404; a message the state machine does not allow now is a 409; either way
nothing changes. Every message is validated against the DSP schemas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from catalog.assets import now_millis
from connector.dsp import negotiation_messages as wire
from connector.dsp.errors import DspError
from connector.dsp.messages import DspMessageError, normalise
from connector.negotiation_worker import NegotiationWorker
from connector.negotiations import (
    INITIAL,
    NegotiationError,
    address_is_under,
    find_by_pid,
    find_initial_offer,
    is_repeat,
    new_pid,
    provider_receive_initial_request,
    receive,
    settle,
    take_implied_delivery,
)
from contracts.models import NegotiationRow
from contracts.negotiation import Message, Role, State, transition
from identity.peer_auth import Peer, PeerInTransaction, authenticated_peer
from runtime.dependencies import db_session, service_core
from runtime.logging import get_logger
from runtime.requests import BodyError, read_json
from runtime.settings import DSP_PATH

MAX_MESSAGE_BYTES = 256 * 1024
ERROR_TYPE = "ContractNegotiationError"

log = get_logger("tessera.negotiation")


def _error(
    status: int, reason: str, provider_pid: str | None = None, consumer_pid: str | None = None
) -> DspError:
    # The error schema requires both pids; where one is not known, say so rather than leave it out.
    return DspError(
        status,
        ERROR_TYPE,
        [reason],
        providerPid=provider_pid or "unknown",
        consumerPid=consumer_pid or "unknown",
    )


async def _body(request: Request) -> Any:
    """The parsed body, or the ``BodyError`` reading it raised: answered only once the peer is known
    (an unauthenticated request gets its 401 whatever it sent)."""
    try:
        return await read_json(request, max_bytes=MAX_MESSAGE_BYTES)
    except BodyError as exc:
        return exc


def _validated(body: Any, kinds: tuple[Message, ...]) -> tuple[Message, dict[str, Any]]:
    if isinstance(body, BodyError):
        raise _error(body.status, body.message)
    pids = body if isinstance(body, dict) else {}
    problems: list[str] = []
    for kind in kinds:
        try:
            message = normalise(body, wire.DSP_TYPE_OF[kind], wire.SCHEMA_OF[kind])
        except DspMessageError as exc:
            problems = exc.reasons
            continue
        if wire.incoming_kind(message) is kind:
            return kind, message
        problems = [f"eventType {message.get('eventType')!r} is not expected here"]
    raise _error(400, "; ".join(problems[:5]), pids.get("providerPid"), pids.get("consumerPid"))


async def _message(request: Request, kinds: tuple[Message, ...]) -> tuple[Message, dict[str, Any]]:
    return _validated(await _body(request), kinds)


class FinalizedHook(Protocol):
    """What runs when a negotiation becomes FINALIZED here (``app.state.on_negotiation_finalized``)."""

    def wants(self, session: Session, negotiation_id: str) -> bool:
        """Asked in the session that finalized it, just after its commit: does this negotiation
        concern the hook?"""

    async def kick(self, negotiation_id: str) -> None: ...


def _finalized_hook(request: Request) -> FinalizedHook | None:
    hook: FinalizedHook | None = getattr(request.app.state, "on_negotiation_finalized", None)
    return hook


def _wanted_by(hook: FinalizedHook | None, session: Session, row: NegotiationRow) -> bool:
    """Does the finalized hook want this negotiation? Asked after the commit: a failure here must not
    turn an applied message into an error answer (the hook's own poll finds what it missed)."""
    if hook is None or row.state != State.FINALIZED.value:
        return False
    try:
        return hook.wants(session, row.id)
    except Exception:
        log.exception("the finalized hook could not be asked", negotiation=row.id)
        return False


def _kick(request: Request, row: NegotiationRow, *, hooked: bool = False) -> BackgroundTask | None:
    """After the answer is sent, deliver the message this step queued (if any), or run the finalized
    hook (``hooked``: the hook wants this negotiation)."""
    hook = _finalized_hook(request)
    if row.state == State.FINALIZED.value and hooked and hook is not None:
        return BackgroundTask(hook.kick, row.id)  # EDR negotiations go on to their transfer
    if row.pending_message is None:
        return None
    worker = request.app.state.negotiation_worker
    return BackgroundTask(worker.kick, row.id)


def _state_object(row: NegotiationRow) -> dict[str, Any]:
    # A consumer's request the provider has answered, before the answer is recorded, is REQUESTED
    # to the provider: DSP has no INITIAL state.
    state = "REQUESTED" if row.state == INITIAL else row.state
    return wire.negotiation_object(row.provider_pid or "", row.consumer_pid or "", state)


def negotiation_router() -> APIRouter:
    router = APIRouter(prefix=f"{DSP_PATH}/negotiations", tags=["dsp negotiation"])

    def handle(kinds: tuple[Message, ...]) -> Callable[..., Any]:
        async def endpoint(pid: str, request: Request) -> Response:
            body = await _body(request)
            core = service_core(request)

            hook = _finalized_hook(request)
            worker: NegotiationWorker = request.app.state.negotiation_worker

            def apply() -> tuple[NegotiationRow, bool]:
                # expire_on_commit=False: the answer reads only what this request wrote.
                with Session(core.engine, expire_on_commit=False) as session:
                    auth = PeerInTransaction(request, session)
                    worker.claim_on_commit(session)  # the kick after the answer sends at once
                    message: dict[str, Any] = body if isinstance(body, dict) else {}
                    try:
                        kind, message = _validated(body, kinds)
                        row = settle(session, find_by_pid(session, pid, auth.peer.did), kind)
                        auth.record_at_commit()
                        row = take_implied_delivery(session, row, kind, message)
                        if (
                            row.role == Role.CONSUMER.value
                            and row.provider_pid is None
                            and row.state != INITIAL
                            and message.get("consumerPid") == row.consumer_pid
                        ):
                            # The provider acknowledged our request without a body (200/204): its
                            # first message tells us its pid.
                            row.provider_pid = message.get("providerPid")
                        if (message.get("providerPid"), message.get("consumerPid")) != (
                            row.provider_pid,
                            row.consumer_pid,
                        ):
                            raise NegotiationError(
                                400,
                                "the message's providerPid and consumerPid do not match this negotiation",
                                row,
                            )
                        receive(session, core, row, kind, message, their_key=auth.peer.public_jwk)
                        auth.finished()
                        return row, _wanted_by(hook, session, row)
                    except NegotiationError as exc:
                        auth.refused()
                        raise _error(
                            exc.status, exc.reason, message.get("providerPid"), message.get("consumerPid")
                        ) from None
                    except DspError:
                        auth.refused()
                        raise

            row, hooked = await run_in_threadpool(apply)
            return Response(status_code=200, background=_kick(request, row, hooked=hooked))

        return endpoint

    @router.post("/request", status_code=201)
    async def initial_request(request: Request) -> JSONResponse:
        body = await _body(request)
        core = service_core(request)
        worker: NegotiationWorker = request.app.state.negotiation_worker

        def apply() -> tuple[NegotiationRow, bool]:
            with Session(core.engine, expire_on_commit=False) as session:  # the answer reads what was written
                auth = PeerInTransaction(request, session)
                worker.claim_on_commit(session)  # the kick after the answer sends at once
                message: dict[str, Any] = body if isinstance(body, dict) else {}
                try:
                    _, message = _validated(body, (Message.REQUEST,))
                    if "providerPid" in message:
                        raise _error(400, "an initial request has no providerPid; send it to /negotiations/{providerPid}/request",
                                     message.get("providerPid"), message.get("consumerPid"))  # fmt: skip
                    auth.record_at_commit()
                    answer = provider_receive_initial_request(session, core, auth.peer, message)
                    auth.finished()
                    return answer
                except NegotiationError as exc:
                    auth.refused()
                    raise _error(exc.status, exc.reason, None, message.get("consumerPid")) from None
                except DspError:
                    auth.refused()
                    raise

        row, created = await run_in_threadpool(apply)
        # A repeat is answered as the first time, without a second delivery or finalized hook.
        background = _kick(request, row) if created else None
        return JSONResponse(_state_object(row), status_code=201, background=background)

    @router.post("/offers", status_code=201)
    async def initial_offer(
        request: Request, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        """A provider starts a negotiation with an offer: it waits for our operator."""
        _, message = await _message(request, (Message.OFFER,))
        callback = message.get("callbackAddress")
        provider_pid = message["providerPid"]
        if not isinstance(callback, str) or not address_is_under(callback, peer.dsp_url):
            raise _error(
                400, f"callbackAddress {callback!r} is not under your registered DSP address", provider_pid
            )
        offer = message["offer"]

        def repeated() -> NegotiationRow | None:
            existing = find_initial_offer(session, provider_pid, peer.did)
            if existing is not None and not is_repeat(session, existing, Message.OFFER, message):
                raise _error(409, f"providerPid {provider_pid} names another negotiation with you",
                             provider_pid, existing.consumer_pid)  # fmt: skip
            return existing

        existing = await run_in_threadpool(repeated)
        if existing is not None:  # the provider sent its offer again: same negotiation, same answer
            return JSONResponse(_state_object(existing), status_code=201)
        row = NegotiationRow(
            id=str(uuid.uuid4()),
            role=Role.CONSUMER.value,
            provider_pid=provider_pid,
            consumer_pid=new_pid(),
            counter_party_did=peer.did,
            counter_party_address=callback.rstrip("/"),
            state=transition(None, Message.OFFER, Role.PROVIDER).value,
            asset_id=offer.get("target"),
            offer=json.dumps(offer),
            approval="manual",
            created_at=now_millis(),
            updated_at=now_millis(),
        )
        session.add(row)
        await run_in_threadpool(session.commit)
        return JSONResponse(_state_object(row), status_code=201)

    @router.get("/{pid}")
    def state(
        pid: str, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        try:
            row = find_by_pid(session, pid, peer.did)
        except NegotiationError as exc:
            raise _error(exc.status, exc.reason) from None
        return JSONResponse(_state_object(row))

    router.add_api_route("/{pid}/request", handle((Message.REQUEST,)), methods=["POST"])
    router.add_api_route("/{pid}/events", handle((Message.ACCEPTED, Message.FINALIZED)), methods=["POST"])
    router.add_api_route("/{pid}/agreement/verification", handle((Message.VERIFICATION,)), methods=["POST"])
    router.add_api_route("/{pid}/termination", handle((Message.TERMINATION,)), methods=["POST"])
    router.add_api_route("/{pid}/offers", handle((Message.OFFER,)), methods=["POST"])
    router.add_api_route("/{pid}/agreement", handle((Message.AGREEMENT,)), methods=["POST"])
    return router
