"""The transfer log over HTTP: checkpoint, entries, proofs, and cosignatures from witnesses.

Who may read what:

- ``GET /log/checkpoint`` is public: a signed checkpoint says only how big the log is and
  its root hash, and anyone must be able to compare what they were shown.
- ``GET /log/proof/inclusion`` and ``GET /log/proof/consistency`` answer authenticated
  trust-list members (peer tokens): hashes only.
- ``GET /log/entries`` answers authenticated members; an entry that names the caller (as
  counter-party, provider or consumer) comes in full, every other one as its leaf hash only,
  so a member can check the tree without reading other members' business.
- ``POST /log/cosignatures``: a member (witness) hands back its cosignature of one of our
  checkpoints.

The operator and auditors read everything through the Management API
(``connector.translog.management``). Numbers in queries must be plain decimals within range;
anything else is a 400 with a JSON body ``{"error": ..., "parameter": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlmodel import Session

from connector.translog import store
from connector.translog.checkpoint import (
    CheckpointError,
    sign_checkpoint,
    store_cosignature,
    with_cosignatures,
)
from identity.keys import public_key_from_jwk
from identity.peer_auth import Peer, authenticated_peer
from identity.trustlist import get_member
from runtime.dependencies import service_core
from runtime.logging import get_logger
from runtime.requests import BodyError, read_json
from runtime.service import ServiceCore

MAX_PAGE = 1000
MAX_NUMBER_DIGITS = 19
NOTE_MEDIA_TYPE = "text/plain; charset=utf-8"
PARTY_FIELDS = ("counterParty", "provider", "consumer", "member")

log = get_logger("tessera.translog")


class LogRequestError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def install_log_error_handler(app: FastAPI) -> None:
    @app.exception_handler(LogRequestError)
    async def log_request_error(_request: Request, exc: LogRequestError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        if exc.parameter:
            body["parameter"] = exc.parameter
        return JSONResponse(body, status_code=exc.status)


def number_param(request: Request, name: str, *, required: bool = True) -> int | None:
    """A non-negative decimal query parameter (at most 19 digits); 400 otherwise."""
    values = request.query_params.getlist(name)
    if not values:
        if required:
            raise LogRequestError(400, f"the query parameter {name!r} is required", name)
        return None
    if len(values) > 1:
        raise LogRequestError(400, f"the query parameter {name!r} is given more than once", name)
    value = values[0]
    if not value.isascii() or not value.isdigit():
        raise LogRequestError(400, f"{name} must be a non-negative whole number, not {value[:40]!r}", name)
    if len(value) > MAX_NUMBER_DIGITS:
        raise LogRequestError(400, f"{name} is far too large", name)
    return int(value)


def required_number(request: Request, name: str) -> int:
    value = number_param(request, name)
    if value is None:  # number_param raised already; this satisfies the type checker
        raise LogRequestError(400, f"the query parameter {name!r} is required", name)
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _range_error(exc: store.RangeError, parameter: str) -> LogRequestError:
    return LogRequestError(400, str(exc), parameter)


def names_party(entry: dict[str, Any], did: str) -> bool:
    return any(entry.get(field) == did for field in PARTY_FIELDS)


def entries_page(conn: Session, start: int, end: int, reader: str | None) -> dict[str, Any]:
    """Entries [start, end) as JSON; ``reader`` None: everything, else only entries naming that DID."""
    size = store.tree_size(conn)
    if end > size:
        raise LogRequestError(400, f"end {end} is beyond the log ({size} entries)", "end")
    if start >= end:
        raise LogRequestError(400, f"start must be below end ({start} >= {end})", "start")
    if end - start > MAX_PAGE:
        raise LogRequestError(400, f"at most {MAX_PAGE} entries per page", "end")
    items = []
    for stored in store.read_entries(conn, start, end):
        item: dict[str, Any] = {"index": stored.index, "leafHash": b64(stored.leaf_hash)}
        entry = json.loads(stored.entry)
        if reader is None or names_party(entry, reader):
            item["entry"] = entry
        items.append(item)
    return {"treeSize": size, "start": start, "end": end, "entries": items}


def inclusion_answer(conn: Session, request: Request) -> dict[str, Any]:
    size = required_number(request, "size")
    index = number_param(request, "index", required=False)
    leaf = request.query_params.get("leafHash")
    if (index is None) == (leaf is None):
        raise LogRequestError(400, "give either index or leafHash (base64), not both", "index")
    if leaf is not None:
        try:
            leaf_bytes = base64.b64decode(leaf, validate=True)
        except (binascii.Error, ValueError):
            raise LogRequestError(400, "leafHash must be base64", "leafHash") from None
        index = store.index_of_leaf(conn, leaf_bytes)
        if index is None or index >= size:
            raise LogRequestError(
                404, f"no entry with that leaf hash in the first {size} entries", "leafHash"
            )
    if index is None:
        raise LogRequestError(400, "give either index or leafHash", "index")
    try:
        proof = store.inclusion_proof(conn, index, size)
        leaf_hash = store.read_entries(conn, index, index + 1)[0].leaf_hash
    except store.RangeError as exc:
        raise _range_error(exc, "index" if "index" in str(exc) else "size") from None
    return {"index": index, "treeSize": size, "leafHash": b64(leaf_hash), "proof": [b64(p) for p in proof]}


def consistency_answer(conn: Session, request: Request) -> dict[str, Any]:
    first = required_number(request, "first")
    second = required_number(request, "second")
    try:
        proof = store.consistency_proof(conn, first, second)
    except store.RangeError as exc:
        raise _range_error(exc, "first" if "first" in str(exc) else "second") from None
    return {"first": first, "second": second, "proof": [b64(p) for p in proof]}


def current_checkpoint_note(core: ServiceCore) -> str:
    """Our newest checkpoint (signed now if the log grew) with the cosignatures we hold."""
    signed = sign_checkpoint(core.engine, core.settings.did, core.key)
    with core.engine.connect() as conn:
        return with_cosignatures(conn, signed)


def transfer_log_router() -> APIRouter:
    router = APIRouter(prefix="/log", tags=["transfer log"])

    @router.get("/checkpoint")
    def checkpoint(request: Request) -> PlainTextResponse:
        core = service_core(request)
        try:
            note = current_checkpoint_note(core)
        except CheckpointError as exc:
            log.error("checkpoint refused", error=str(exc))
            raise LogRequestError(503, str(exc)) from None
        return PlainTextResponse(note, media_type=NOTE_MEDIA_TYPE)

    @router.get("/entries")
    def entries(request: Request, peer: Peer = Depends(authenticated_peer)) -> JSONResponse:
        start, end = required_number(request, "start"), required_number(request, "end")
        with Session(service_core(request).engine) as session:
            return JSONResponse(entries_page(session, start, end, peer.did))

    @router.get("/proof/inclusion")
    def inclusion(request: Request, _peer: Peer = Depends(authenticated_peer)) -> JSONResponse:
        with Session(service_core(request).engine) as session:
            return JSONResponse(inclusion_answer(session, request))

    @router.get("/proof/consistency")
    def consistency(request: Request, _peer: Peer = Depends(authenticated_peer)) -> JSONResponse:
        with Session(service_core(request).engine) as session:
            return JSONResponse(consistency_answer(session, request))

    @router.post("/cosignatures")
    async def cosignatures(request: Request, peer: Peer = Depends(authenticated_peer)) -> JSONResponse:
        try:
            body = await read_json(request, max_bytes=16 * 1024)
        except BodyError as exc:
            raise LogRequestError(exc.status, exc.message) from None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("checkpoint", "cosignature")
        ):
            raise LogRequestError(
                400, 'the body is {"checkpoint": <note text>, "cosignature": <signature line>}'
            )
        core = service_core(request)

        def keep() -> int:
            with Session(core.engine) as session:
                member = get_member(session, peer.did)
            if member is None:
                raise LogRequestError(401, "you are no longer a member")
            return store_cosignature(
                core.engine,
                core.settings.did,
                peer.did,
                public_key_from_jwk(member.public_jwk),
                body["checkpoint"],
                body["cosignature"],
            )

        try:
            size = await run_in_threadpool(keep)
        except CheckpointError as exc:
            raise LogRequestError(400, str(exc)) from None
        log.info("cosignature stored", witness=peer.did, size=size)
        return JSONResponse({"stored": True, "treeSize": size})

    return router
