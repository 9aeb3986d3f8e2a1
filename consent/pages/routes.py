"""``/citizen``: a citizen's choices, history, receipts, who received their data, and the export.

Server-rendered HTML that works without JavaScript. Every page needs a
session (else it redirects to the sign-in page); every change is a POST with
the session's CSRF token (403 without it, nothing changed). Each page and
action reads and writes only the signed-in citizen's records, through the
service layer (``consent.service``), which answers NotFound for anything of
another citizen, exactly as for something that does not exist.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session
from starlette.datastructures import FormData

from consent.errors import ConsentError, NotFound
from consent.pages.auth import PAGES_PATH, Citizen, csrf_matches, require_citizen
from consent.pages.render import message_page, page, refused_page, static_file
from consent.pages.words import (
    Names,
    category_words,
    duration_words,
    lawful_basis_words,
    purpose_words,
    state_words,
)
from consent.receipts import ReceiptSigner
from consent.service import (
    ConsentChange,
    HistoryEntry,
    export_citizen,
    history,
    organisations_for,
    receipt_of,
    set_consent,
    subject_identifiers,
    transfers_of,
    withdraw_everything,
)
from runtime.dependencies import db_session
from runtime.forms import form_text, read_form
from runtime.page_styles import page_stylesheet

METHOD = "self-service-page"
DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
MAX_SEQ_DIGITS = 18
STATIC_HEADERS = {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"}


def _actor(citizen: Citizen) -> str:
    return f"citizen:{citizen.id}"


def _signer(request: Request) -> ReceiptSigner:
    """The service's receipt signer (its DID and key), made once by the app factory."""
    signer: ReceiptSigner = request.app.state.receipt_signer
    return signer


def _error_page(request: Request, citizen: Citizen, error: ConsentError) -> Response:
    titles = {404: "Not found", 409: "Cannot change this now", 422: "Not a valid choice"}
    return message_page(
        request,
        title=titles.get(error.status, "Not changed"),
        status=error.status,
        citizen=citizen,
        message=f"Nothing was changed: {error.message}.",
    )


def _seq(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= MAX_SEQ_DIGITS else None


def _confirmation(entry: HistoryEntry, names: Names) -> str:
    recipient = names(entry.recipient_did)
    purpose = purpose_words(entry.purpose)
    if entry.state in ("ConsentGiven", "RenewedConsentGiven"):
        return (
            f"Saved: {recipient} may now receive your data for {purpose}. Your receipt is ready to download."
        )
    if entry.state == "ConsentWithdrawn":
        return f"Saved: {recipient} may no longer receive your data for {purpose}. Your receipt is ready to download."
    return f"Saved: you said no to {recipient} for {purpose}. Your receipt is ready to download."


def citizen_pages_router() -> APIRouter:
    router = APIRouter(prefix=PAGES_PATH, include_in_schema=False)

    @router.get("/static/consent.css")
    def css() -> Response:
        return Response(
            page_stylesheet("consent.pages", "consent.css"), media_type="text/css", headers=STATIC_HEADERS
        )

    @router.get("/static/consent.js")
    def script() -> Response:
        return Response(static_file("consent.js"), media_type="text/javascript", headers=STATIC_HEADERS)

    @router.get("")
    def choices(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        organisations = organisations_for(db, citizen.id)
        names = Names.of(organisations)
        confirmation = None
        receipt_seq = None
        saved = _seq(request.query_params.get("saved", ""))
        if saved is not None:
            entry = next((e for e in history(db, citizen.id) if e.seq == saved), None)
            if entry is not None:
                confirmation = _confirmation(entry, names)
                receipt_seq = entry.seq if entry.has_receipt else None
        elif request.query_params.get("unchanged"):
            confirmation = "No change: that switch already was in that position."
        withdrawn = request.query_params.get("withdrawn", "")
        if withdrawn.isdigit() and len(withdrawn) < 6:
            count = int(withdrawn)
            confirmation = (
                "You had no consent to withdraw: every switch is off."
                if count == 0
                else f"Withdrawn: all {count} of your yes answers are now off. Receipts are in your history."
            )
        any_on = any(s.on for o in organisations for a in o.agreements for s in a.switches)
        return page(
            request,
            "choices.html",
            title=("Saved — Your choices" if confirmation else "Your choices"),
            citizen=citizen,
            section="choices",
            organisations=organisations,
            confirmation=confirmation,
            receipt_seq=receipt_seq,
            any_on=any_on,
            identifiers=subject_identifiers(db, citizen.id),
            names=names,
            purpose_words=purpose_words,
            duration_words=duration_words,
            category_words=category_words,
            lawful_basis_words=lawful_basis_words,
            state_words=state_words,
        )

    @router.post("/choices")
    def change(
        request: Request, db: Session = Depends(db_session), form: FormData = Depends(read_form)
    ) -> Response:
        # A plain function (run in a worker thread): the database and the receipt's signature stay
        # off the event loop.
        citizen = require_citizen(request, db)
        if not csrf_matches(citizen, form):
            return refused_page(request, citizen)
        wanted = form_text(form, "on")
        if wanted not in ("true", "false"):
            return message_page(
                request,
                title="Not a valid choice",
                status=422,
                citizen=citizen,
                message="Nothing was changed: the form did not say whether to turn the switch on or off.",
            )
        agreement_id = form_text(form, "agreement")[:64]
        recipient_did = form_text(form, "recipient")[:512]
        try:
            result: ConsentChange = set_consent(
                db,
                _signer(request),
                citizen.id,
                agreement_id,
                recipient_did,
                wanted == "true",
                actor=_actor(citizen),
                method=METHOD,
            )
        except ConsentError as exc:
            db.rollback()
            return _error_page(request, citizen, exc)
        anchor = f"#choice-{form_text(form, 'anchor')}" if form_text(form, "anchor").isdigit() else ""
        if not result.changed or result.seq is None:
            return RedirectResponse(f"{PAGES_PATH}?unchanged=true{anchor}", status_code=303)
        return RedirectResponse(f"{PAGES_PATH}?saved={result.seq}{anchor}", status_code=303)

    @router.get("/withdraw-all")
    def withdraw_all_form(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        organisations = organisations_for(db, citizen.id)
        names = Names.of(organisations)
        active = [
            (names(organisation.did), agreement, switch)
            for organisation in organisations
            for agreement in organisation.agreements
            for switch in agreement.switches
            if switch.on
        ]
        return page(
            request,
            "withdraw_all.html",
            title="Withdraw everything",
            citizen=citizen,
            section="choices",
            active=active,
            purpose_words=purpose_words,
        )

    @router.post("/withdraw-all")
    def withdraw_all(
        request: Request, db: Session = Depends(db_session), form: FormData = Depends(read_form)
    ) -> Response:
        citizen = require_citizen(request, db)
        if not csrf_matches(citizen, form):
            return refused_page(request, citizen)
        if form_text(form, "confirm") != "yes":
            return message_page(
                request,
                title="Not withdrawn",
                status=422,
                citizen=citizen,
                message="Nothing was changed: confirm that you want to withdraw everything.",
            )
        try:
            results = withdraw_everything(
                db, _signer(request), citizen.id, actor=_actor(citizen), method=METHOD
            )
        except ConsentError as exc:
            db.rollback()
            return _error_page(request, citizen, exc)
        return RedirectResponse(f"{PAGES_PATH}?withdrawn={len(results)}", status_code=303)

    @router.get("/history")
    def history_page(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        names = Names.of(organisations_for(db, citizen.id))
        return page(
            request,
            "history.html",
            title="History",
            citizen=citizen,
            section="history",
            entries=history(db, citizen.id),
            names=names,
            purpose_words=purpose_words,
            state_words=state_words,
        )

    @router.get("/receipts/{seq}")
    def receipt(seq: str, request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        number = _seq(seq.removesuffix(".jws"))
        try:
            if number is None:
                raise NotFound("no such receipt of yours")
            token = receipt_of(db, citizen.id, number)
        except ConsentError as exc:
            return _error_page(request, citizen, exc)
        return Response(
            token,
            media_type="application/jose",
            headers={
                **DOWNLOAD_HEADERS,
                "Content-Disposition": f'attachment; filename="consent-receipt-{number}.jws"',
            },
        )

    @router.get("/transfers")
    def transfers_page(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        names = Names.of(organisations_for(db, citizen.id))
        return page(
            request,
            "transfers.html",
            title="Who received your data",
            citizen=citizen,
            section="transfers",
            transfers=transfers_of(db, citizen.id),
            names=names,
            purpose_words=purpose_words,
        )

    @router.get("/export")
    def export(request: Request, db: Session = Depends(db_session)) -> Response:
        citizen = require_citizen(request, db)
        document: dict[str, Any] = {
            "account": {"name": citizen.account.name, "display_name": citizen.account.display_name},
            **export_citizen(db, citizen.id),
        }
        return Response(
            json.dumps(document, indent=2, ensure_ascii=False),
            media_type="application/json",
            headers={
                **DOWNLOAD_HEADERS,
                "Content-Disposition": 'attachment; filename="my-consent-data.json"',
            },
        )

    return router
