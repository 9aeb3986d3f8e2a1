"""The connector-facing API (peer-authenticated with self-issued tokens).

Controllers register and revise their data agreements, fetch their
pseudonymisation key, ask for batch decisions, follow the change feed and
report transfer summaries. The caller is always the controller: an agreement,
decision or report is about the authenticated peer's own DID.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from sqlmodel import Session

from consent.agreements import (
    NAME_PATTERN,
    AgreementTerms,
    Did,
    agreement_view,
    agreements_of,
    latest_revision,
    own_agreement,
    pseudonym_key_of,
    register_agreement,
    revise_agreement,
    revisions_of,
)
from consent.decisions import DecisionIndex
from consent.errors import ConsentError, InvalidInput, NotController
from consent.feed import change_stream
from consent.ratelimit import RateLimiter
from consent.settings import CONSENT_API_PATH, ConsentSettings
from consent.transfers import TransferReport, record_transfer_report
from identity.peer_auth import Peer, authenticated_peer
from runtime.dependencies import db_session, service_core

SubjectHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class RevisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: AgreementTerms
    # False: an editorial change (typo); consent given for earlier revisions keeps counting.
    material: bool = True


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controller: Did
    recipient: Did
    purpose: Name
    dataset: Name
    # 64 lowercase hex digits each (checked in one pass over all of them: see _check_subject_hashes)
    subjects: list[Annotated[str, StringConstraints(min_length=64, max_length=64)]] = Field(min_length=1)

    @field_validator("subjects")
    @classmethod
    def _check_subject_hashes(cls, subjects: list[str]) -> list[str]:
        joined = "".join(subjects)
        try:
            decoded = bytes.fromhex(joined)
        except ValueError:
            raise ValueError("subjects must be keyed hashes: 64 lowercase hex digits each") from None
        if len(decoded) * 2 != len(joined) or not joined.isascii() or joined != joined.lower():
            raise ValueError("subjects must be keyed hashes: 64 lowercase hex digits each")
        return subjects


def error_response(exc: ConsentError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)


def _settings(request: Request) -> ConsentSettings:
    settings = service_core(request).settings
    assert isinstance(settings, ConsentSettings)
    return settings


def connector_router(index: DecisionIndex, limiter: RateLimiter) -> APIRouter:
    api = APIRouter(prefix=CONSENT_API_PATH, tags=["connectors"])

    @api.get("/pseudonymisation-key")
    def pseudonymisation_key(
        peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> dict[str, str]:
        """The caller's key for subject pseudonyms (HMAC-SHA256); see docs/consent.md."""
        return {
            "controller": peer.did,
            "algorithm": "HMAC-SHA256",
            "key": pseudonym_key_of(session, peer.did),
        }

    @api.post("/agreements", status_code=201)
    def register(
        terms: AgreementTerms,
        peer: Peer = Depends(authenticated_peer),
        session: Session = Depends(db_session),
    ) -> dict[str, Any]:
        revision = register_agreement(session, peer.did, terms)
        return agreement_view(own_agreement(session, peer.did, revision.agreement_id), revision)

    @api.put("/agreements/{agreement_id}")
    def revise(
        agreement_id: str,
        body: RevisionRequest,
        peer: Peer = Depends(authenticated_peer),
        session: Session = Depends(db_session),
    ) -> dict[str, Any]:
        revision = revise_agreement(session, peer.did, agreement_id, body.terms, material=body.material)
        return agreement_view(own_agreement(session, peer.did, agreement_id), revision)

    @api.get("/agreements")
    def list_agreements(
        peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> dict[str, Any]:
        return {
            "agreements": [
                agreement_view(a, latest_revision(session, a)) for a in agreements_of(session, peer.did)
            ]
        }

    @api.get("/agreements/{agreement_id}")
    def get_agreement(
        agreement_id: str, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> dict[str, Any]:
        agreement = own_agreement(session, peer.did, agreement_id)
        view = agreement_view(agreement, latest_revision(session, agreement))
        view["revisions"] = [
            {"version": r.version, "content_hash": r.content_hash, "created_at": r.created_at}
            for r in revisions_of(session, agreement_id)
        ]
        return view

    @api.post(
        "/decisions",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DecisionRequest.model_json_schema()}},
            }
        },
    )
    async def decide(request: Request, peer: Peer = Depends(authenticated_peer)) -> Response:
        """Which of the subjects (keyed hashes) may be released to ``recipient`` for ``purpose``."""
        settings = _settings(request)
        wait = limiter.acquire(peer.did)
        if wait > 0:
            return JSONResponse(
                {"error": "rate_limited", "message": "too many decision requests; slow down"},
                status_code=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        raw = await request.body()
        if len(raw) > settings.max_decision_subjects * 70 + 8192:
            return JSONResponse(
                {
                    "error": "too_large",
                    "message": f"at most {settings.max_decision_subjects} subjects per request",
                },
                status_code=413,
            )
        try:  # parsed and validated by pydantic-core in one pass: the hot path of the service
            body = DecisionRequest.model_validate_json(raw)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse(
                {"error": "invalid", "message": "the decision request is malformed", "detail": details},
                status_code=422,
            )
        if body.controller != peer.did:
            raise NotController(
                f"you are {peer.did}: you can only ask about your own data ({body.controller})"
            )
        if len(body.subjects) > settings.max_decision_subjects:
            raise InvalidInput(f"at most {settings.max_decision_subjects} subjects per request")
        if not index.loaded:  # the first load takes seconds with millions of consents: not on the event loop
            await asyncio.to_thread(index.refresh)
        decision = index.decide(body.controller, body.recipient, body.purpose, body.dataset, body.subjects)
        answer = {
            "decision_id": decision.decision_id,
            "revision": decision.revision,
            "controller": body.controller,
            "recipient": body.recipient,
            "purpose": body.purpose,
            "dataset": body.dataset,
            "agreements": [{"id": i, "version": v} for i, v in decision.agreements],
            "allowed": decision.allowed,
            "withheld": len(body.subjects) - len(decision.allowed),
        }
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    @api.get("/changes")
    def changes(
        request: Request,
        peer: Peer = Depends(authenticated_peer),
        last_event_id: str | None = Header(default=None),
        after: int | None = Query(default=None, ge=0),
    ) -> StreamingResponse:
        """Server-sent events: the caller's changes from ``Last-Event-ID`` (or ``after``) on."""
        position = after
        if last_event_id is not None:
            if not last_event_id.isdigit() or len(last_event_id) > 18:
                raise InvalidInput("Last-Event-ID must be a sequence number")
            position = int(last_event_id)
        engine = service_core(request).engine
        stream = change_stream(
            request, engine, peer.did, position, _settings(request).change_feed_poll_seconds
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.post("/transfer-summaries")
    def report_transfer(
        report: TransferReport,
        peer: Peer = Depends(authenticated_peer),
        session: Session = Depends(db_session),
    ) -> dict[str, int]:
        """A connector reports what it released (per subject hash) so citizens see who got their data."""
        return record_transfer_report(session, peer.did, report)

    return api
