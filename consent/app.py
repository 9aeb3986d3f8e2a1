"""The citizen consent service's FastAPI app factory.

A service of its own with its own database; a member of the data space with
its own DID, which connectors authenticate to with self-issued tokens.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from consent.api import connector_router, error_response
from consent.decisions import DecisionIndex
from consent.errors import ConsentError
from consent.pages.routes import citizen_pages_router
from consent.pages.sign_in_routes import sign_in_router
from consent.ratelimit import RateLimiter
from consent.receipts import ReceiptSigner
from consent.service import expire_due
from consent.settings import CONSENT_API_PATH, ConsentSettings
from identity.did import consent_services
from identity.peer_auth import Peer, authenticated_peer
from runtime.logging import get_logger
from runtime.service import ServiceCore, base_app


def receipt_signer(core: ServiceCore) -> ReceiptSigner:
    """The identity receipts are signed with: the service's DID and key."""
    return ReceiptSigner(core.settings.did, core.key)


def create_app(core: ServiceCore) -> FastAPI:
    settings = core.settings
    assert isinstance(settings, ConsentSettings)
    index = DecisionIndex(core.engine)
    signer = receipt_signer(core)

    async def sweep_expired() -> None:
        log = get_logger("tessera.consent")
        while settings.expiry_sweep_seconds:
            await asyncio.sleep(settings.expiry_sweep_seconds)
            try:
                with Session(core.engine) as session:
                    expired = await asyncio.to_thread(expire_due, session, signer)
                if expired:
                    log.info("consents expired", count=expired)
            except Exception:  # the sweep only writes down what decisions already enforce
                log.exception("expiry sweep failed")

    async def load_index_then_close_at_shutdown() -> None:
        try:
            try:  # ready before the first decision, if it can be
                await asyncio.to_thread(index.refresh)
            except Exception:
                get_logger("tessera.consent").exception(
                    "decision index not loaded at start; the first decision loads it"
                )
            await asyncio.Event().wait()
        finally:
            index.close()

    app = base_app(
        core,
        title=f"Tessera consent service {settings.name}",
        services=consent_services(settings.did, settings.api_url),
        background=[sweep_expired, load_index_then_close_at_shutdown],
    )
    app.state.decision_index = index
    app.state.receipt_signer = signer

    @app.exception_handler(ConsentError)
    async def consent_error(_request: Request, exc: ConsentError) -> JSONResponse:
        return error_response(exc)

    api = APIRouter(prefix=CONSENT_API_PATH, tags=["connectors"])

    @api.get("/whoami")
    def whoami(peer: Peer = Depends(authenticated_peer)) -> dict[str, str]:
        """Connectivity check for connectors: who we think is calling."""
        return {"peer": peer.did, "consent_service": settings.did}

    app.include_router(api)
    app.include_router(
        connector_router(index, RateLimiter(settings.decision_rate_per_second, settings.decision_burst))
    )
    app.include_router(sign_in_router(settings))
    app.include_router(citizen_pages_router())
    return app
