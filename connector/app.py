"""The connector's FastAPI app factory."""

from __future__ import annotations

from fastapi import FastAPI

from connector.discovery import discovery_router
from connector.peers import peers_router
from identity.did import dsp_services
from runtime.service import ServiceCore, base_app


def create_app(core: ServiceCore) -> FastAPI:
    settings = core.settings
    app = base_app(
        core,
        title=f"Tessera connector {settings.name}",
        services=dsp_services(settings.did, settings.public_url, settings.dsp_url),
    )
    app.include_router(discovery_router())
    app.include_router(peers_router())
    return app
