"""Peer-facing routes that exist for every connector, whatever it publishes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from identity.peer_auth import Peer, authenticated_peer
from runtime.settings import DSP_PATH


def peers_router() -> APIRouter:
    router = APIRouter(prefix=DSP_PATH, tags=["peers"])

    @router.get("/whoami")
    def whoami(request: Request, peer: Peer = Depends(authenticated_peer)) -> dict[str, str]:
        """Connectivity check: who we think is calling, and who answers."""
        return {"peer": peer.did, "connector": request.app.state.core.settings.did}

    return router
