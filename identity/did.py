"""``did:web`` identifiers and the DID documents a participant publishes.

did:web maps a DID to an HTTPS URL (https://w3c-ccg.github.io/did-method-web/):
``did:web:host%3Aport:path:segments``. We derive a participant's DID from its
public URL and check, when a document is fetched, that its ``id`` is the DID
of the URL it came from, so one host cannot claim another's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from identity.errors import DidError, KeyFileError
from identity.keys import normalised_public_jwk, public_jwk

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
JWS_2020_CONTEXT = "https://w3id.org/security/suites/jws-2020/v1"
DSPACE_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
KEY_FRAGMENT = "key-1"
WELL_KNOWN_DID_PATH = "/.well-known/did.json"
CONSENT_SERVICE_TYPE = "TesseraConsentService"


def did_from_url(url: str) -> str:
    """The did:web identifier of a participant whose public base URL is ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DidError(f"{url!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise DidError(f"{url!r} must not have a query or fragment")
    host = parts.hostname.lower()
    if parts.port is not None:
        host = f"{host}%3A{parts.port}"
    segments = [quote(unquote(s), safe="") for s in parts.path.split("/") if s]
    return ":".join(["did", "web", host, *segments])


def document_url_for(did: str, scheme: str = "https") -> str:
    """Where the DID document of ``did`` is published (did:web resolution)."""
    if not did.startswith("did:web:"):
        raise DidError(f"{did!r} is not a did:web identifier")
    host, *segments = did[len("did:web:") :].split(":")
    if not host:
        raise DidError(f"{did!r} has no host")
    base = f"{scheme}://{unquote(host)}"
    if segments:
        return base + "/" + "/".join(segments) + "/did.json"
    return base + WELL_KNOWN_DID_PATH


def did_from_document_url(url: str) -> str:
    """The DID a document fetched from ``url`` must carry as its ``id``."""
    parts = urlsplit(url)
    path = parts.path
    if path.endswith(WELL_KNOWN_DID_PATH):
        path = path[: -len(WELL_KNOWN_DID_PATH)]
    elif path.endswith("/did.json"):
        path = path[: -len("/did.json")]
    else:
        raise DidError(f"{url!r} is not a did:web document URL (…/.well-known/did.json or …/did.json)")
    return did_from_url(f"{parts.scheme}://{parts.netloc}{path}")


def dsp_services(did: str, public_url: str, dsp_url: str) -> list[dict[str, Any]]:
    """A connector's DSP 2025-1 service entries.

    ``CatalogService`` points at the catalog endpoint, ``DataService`` at the
    version metadata endpoint, as the specification's examples show.
    """
    service_context = [DSPACE_CONTEXT, DID_CONTEXT]
    return [
        {
            "@context": service_context,
            "id": f"{did}#catalog",
            "type": "CatalogService",
            "serviceEndpoint": f"{dsp_url}/catalog",
        },
        {
            "@context": service_context,
            "id": f"{did}#dsp",
            "type": "DataService",
            "serviceEndpoint": f"{public_url.rstrip('/')}/.well-known/dspace-version",
        },
    ]


def consent_services(did: str, api_url: str) -> list[dict[str, Any]]:
    """The consent service's entry: where connectors ask for consent decisions."""
    return [{"id": f"{did}#consent", "type": CONSENT_SERVICE_TYPE, "serviceEndpoint": api_url}]


def build_did_document(did: str, key: Ed25519PublicKey, services: list[dict[str, Any]]) -> dict[str, Any]:
    """A participant's DID document: one Ed25519 JWK and its service entries."""
    key_id = f"{did}#{KEY_FRAGMENT}"
    return {
        "@context": [DID_CONTEXT, JWS_2020_CONTEXT],
        "id": did,
        "verificationMethod": [
            {
                "id": key_id,
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": public_jwk(key),
            }
        ],
        "authentication": [key_id],
        "assertionMethod": [key_id],
        "service": services,
    }


@dataclass(frozen=True)
class ResolvedParticipant:
    """What a DID document tells us about a participant, after validation."""

    did: str
    public_jwk: dict[str, str]
    dsp_url: str


def parse_did_document(document: Any, expected_did: str) -> ResolvedParticipant:
    """Validate a fetched DID document and extract its key and DSP base URL."""
    if not isinstance(document, dict):
        raise DidError("the DID document is not a JSON object")
    if document.get("id") != expected_did:
        raise DidError(
            f"the DID document's id {document.get('id')!r} is not {expected_did!r}, the DID of its URL"
        )
    methods = document.get("verificationMethod")
    if not isinstance(methods, list) or not methods:
        raise DidError("the DID document has no verificationMethod")
    jwk: dict[str, str] | None = None
    for method in methods:
        if isinstance(method, dict) and isinstance(method.get("publicKeyJwk"), dict):
            try:
                jwk = normalised_public_jwk(method["publicKeyJwk"])
            except KeyFileError:
                continue
            break
    if jwk is None:
        raise DidError("the DID document has no Ed25519 publicKeyJwk")
    dsp_url = _service_base_url(document.get("service"))
    if dsp_url is None:
        raise DidError(
            f"the DID document has no CatalogService (Dataspace Protocol) or {CONSENT_SERVICE_TYPE} entry"
        )
    parts = urlsplit(dsp_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DidError(f"the DSP endpoint {dsp_url!r} is not an http(s) URL")
    return ResolvedParticipant(did=expected_did, public_jwk=jwk, dsp_url=dsp_url)


def _service_base_url(services: Any) -> str | None:
    """The base URL a member is called at: its DSP base, or the consent service's API."""
    if not isinstance(services, list):
        return None
    for service in services:
        if not isinstance(service, dict) or not isinstance(service.get("serviceEndpoint"), str):
            continue
        endpoint: str = service["serviceEndpoint"]
        if service.get("type") == "CatalogService" and endpoint.endswith("/catalog"):
            return endpoint[: -len("/catalog")]
        if service.get("type") == CONSENT_SERVICE_TYPE:
            return endpoint.rstrip("/")
    return None
