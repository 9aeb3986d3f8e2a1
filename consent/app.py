"""The citizen consent service's FastAPI app factory.

A service of its own with its own database; a member of the data space with
its own DID, which connectors authenticate to with self-issued tokens.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from consent.pages.routes import citizen_pages_router
from consent.pages.sign_in_routes import sign_in_router
from consent.settings import CONSENT_API_PATH, ConsentSettings
from identity.did import consent_services
from identity.peer_auth import Peer, authenticated_peer
from runtime.service import ServiceCore, base_app


def create_app(core: ServiceCore) -> FastAPI:
    settings = core.settings
    assert isinstance(settings, ConsentSettings)
    app = base_app(
        core,
        title=f"Tessera consent service {settings.name}",
        services=consent_services(settings.did, settings.api_url),
    )
    api = APIRouter(prefix=CONSENT_API_PATH, tags=["connectors"])

    @api.get("/whoami")
    def whoami(peer: Peer = Depends(authenticated_peer)) -> dict[str, str]:
        """Connectivity check for connectors: who we think is calling."""
        return {"peer": peer.did, "consent_service": settings.did}

    app.include_router(api)
    app.include_router(sign_in_router(settings))
    app.include_router(citizen_pages_router())
    return app
