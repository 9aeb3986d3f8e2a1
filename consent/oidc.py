"""Sign-in through an external OpenID Connect provider (authorization code flow with PKCE).

The provider is the one the operator configured (``oidc_issuer``); its
discovery document and keys are fetched from the issuer's own URL, and its
discovery document must name that same issuer. authlib's OAuth 2.0
helpers build the authorization request (state, nonce, S256 code challenge)
and the token request, sent with the client secret (HTTP Basic); the ID token's signature
is checked against the provider's JWKS, and its issuer, audience, expiry and
nonce against what this sign-in sent. Anything else fails closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

DISCOVERY_PATH = "/.well-known/openid-configuration"
METADATA_LIFETIME_SECONDS = 3600.0
ID_TOKEN_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
CLOCK_LEEWAY_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 256 * 1024


class OidcError(Exception):
    """The provider could not be used or its answer was not acceptable (message says why, no secrets)."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class OidcIdentity:
    issuer: str
    subject: str
    name: str


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str


def _endpoint(document: dict[str, Any], name: str, issuer: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise OidcError(f"the provider's discovery document has no usable {name}")
    # Plain http only where the issuer itself is plain http (a provider on this machine, in tests).
    if value.startswith("http://") and not issuer.startswith("http://"):
        raise OidcError(f"the provider's {name} is not https")
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class OidcClient:
    """One configured provider: cached discovery and keys, authorization URLs, code redemption."""

    def __init__(self, config: OidcConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, transport=self._transport)

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._http() as client:
                response = await client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise OidcError(f"the provider's {what} could not be fetched") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise OidcError(f"the provider's {what} answered {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise OidcError(f"the provider's {what} is not JSON") from None
        if not isinstance(document, dict):
            raise OidcError(f"the provider's {what} is not a JSON object")
        return document

    async def metadata(self) -> ProviderMetadata:
        fresh = time.monotonic() - self._metadata_at < METADATA_LIFETIME_SECONDS
        if self._metadata is not None and fresh:
            return self._metadata
        issuer = self.config.issuer
        document = await self._get_json(issuer.rstrip("/") + DISCOVERY_PATH, "discovery document")
        if document.get("issuer") != issuer:
            raise OidcError("the provider's discovery document names another issuer")
        self._metadata = ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=_endpoint(document, "authorization_endpoint", issuer),
            token_endpoint=_endpoint(document, "token_endpoint", issuer),
            jwks_uri=_endpoint(document, "jwks_uri", issuer),
        )
        self._metadata_at = time.monotonic()
        self._keys = None
        return self._metadata

    def form_targets(self) -> list[str]:
        """Origins a sign-in form may lead to, for the CSP: the issuer's, and its authorization
        endpoint's once discovery has named it (never fetched here: a provider that is down must not
        slow the sign-in page)."""
        origins = {_origin(self.config.issuer)}
        if self._metadata is not None:
            origins.add(_origin(self._metadata.authorization_endpoint))
        return sorted(origins)

    async def authorization_url(self, *, state: str, nonce: str, code_verifier: str) -> str:
        metadata = await self.metadata()
        return str(
            prepare_grant_uri(
                metadata.authorization_endpoint,
                client_id=self.config.client_id,
                response_type="code",
                redirect_uri=self.config.redirect_uri,
                scope="openid profile",
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(code_verifier),
                code_challenge_method="S256",
            )
        )

    async def _key_set(self, refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            document = await self._get_json((await self.metadata()).jwks_uri, "key set")
            try:
                self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError):
                raise OidcError("the provider's key set cannot be read") from None
        return self._keys

    async def redeem(self, *, code: str, code_verifier: str, nonce: str) -> OidcIdentity:
        """Exchange the authorization code and check the ID token; the citizen's identity at the provider."""
        metadata = await self.metadata()
        body = prepare_token_request(
            "authorization_code",
            redirect_uri=self.config.redirect_uri,
            code=code,
            code_verifier=code_verifier,
        )
        try:
            async with self._http() as client:
                response = await client.post(
                    metadata.token_endpoint,
                    content=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Accept": "application/json",
                    },
                    auth=httpx.BasicAuth(
                        quote(self.config.client_id, safe=""), quote(self.config.client_secret, safe="")
                    ),
                )
        except httpx.HTTPError:
            raise OidcError("the provider's token endpoint could not be reached") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise OidcError(f"the provider refused the sign-in code ({response.status_code})")
        try:
            token = response.json()
        except ValueError:
            raise OidcError("the provider's token response is not JSON") from None
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise OidcError("the provider sent no ID token")
        return await self._check_id_token(id_token, nonce)

    async def _check_id_token(self, id_token: str, nonce: str) -> OidcIdentity:
        decoded = None
        for refresh in (False, True):  # a key we do not know yet: the provider may have rotated
            try:
                decoded = jwt.decode(id_token, await self._key_set(refresh), algorithms=ID_TOKEN_ALGORITHMS)
                break
            except JoseError:
                continue
            except (ValueError, TypeError):
                break
        if decoded is None:
            raise OidcError("the ID token's signature does not verify with the provider's keys")
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=CLOCK_LEEWAY_SECONDS,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OidcError(f"the ID token is not acceptable ({exc.error})") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError("the ID token was issued to another client")
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= 255:
            raise OidcError("the ID token's subject is not usable")
        name = claims.get("name")
        return OidcIdentity(self.config.issuer, subject, name[:200] if isinstance(name, str) else "")
