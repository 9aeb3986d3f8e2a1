"""Unauthenticated discovery: which Dataspace Protocol versions we speak, and where."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from runtime.settings import DSP_PATH

DSP_VERSION = "2025-1"


def version_metadata() -> dict[str, Any]:
    return {
        "protocolVersions": [
            {
                "version": DSP_VERSION,
                "path": DSP_PATH,
                "binding": "HTTPS",
                "identifierType": "did:web",
                "auth": {"protocol": "tessera-self-issued-jwt", "version": "1", "profile": ["EdDSA"]},
            }
        ]
    }


def discovery_router() -> APIRouter:
    router = APIRouter(tags=["discovery"])

    @router.get("/.well-known/dspace-version")
    def dspace_version() -> dict[str, Any]:
        return version_metadata()

    return router
