"""A small OpenID Connect provider for the tests: a real peer process, not the thing under test.

``python -m tests.oidc_provider --port P --client-id ID --client-secret SECRET --redirect-uri URI``
serves discovery, a JWKS with a fresh RSA key, an authorization page (a form
where the test types the subject to sign in as), and a token endpoint that
checks the client secret, the redirect URI and the PKCE verifier before it
issues an RS256 ID token carrying the nonce of the authorization request.

``POST /test/misbehave`` with ``{"mode": ...}`` makes the next ID tokens wrong
in one way (``wrong-nonce``, ``wrong-audience``, ``wrong-issuer``, ``expired``,
``foreign-key``) so the tests can show the consent service refuses them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

MODES = {"normal", "wrong-nonce", "wrong-audience", "wrong-issuer", "expired", "foreign-key"}


@dataclass
class Grant:
    subject: str
    nonce: str
    redirect_uri: str
    code_challenge: str


@dataclass
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "test-1"}))
    foreign: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "test-1"}))
    grants: dict[str, Grant] = field(default_factory=dict)
    mode: str = "normal"
    token_requests: int = 0

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer + ("/other" if self.mode == "wrong-issuer" else ""),
            "sub": grant.subject,
            "aud": "someone-else" if self.mode == "wrong-audience" else self.client_id,
            "iat": now - (7200 if self.mode == "expired" else 0),
            "exp": now + (-3600 if self.mode == "expired" else 300),
            "nonce": "not-your-nonce" if self.mode == "wrong-nonce" else grant.nonce,
            "name": f"Test citizen {grant.subject}",
        }
        key = self.foreign if self.mode == "foreign-key" else self.key
        return jwt.encode({"alg": "RS256", "kid": "test-1"}, claims, key)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


def build_app(provider: Provider) -> Starlette:
    async def discovery(_request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": provider.issuer,
                "authorization_endpoint": provider.issuer + "/authorize",
                "token_endpoint": provider.issuer + "/token",
                "jwks_uri": provider.issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def jwks(_request: Request) -> Response:
        return JSONResponse({"keys": [provider.key.as_dict(private=False)]})

    async def authorize_form(request: Request) -> Response:
        query = request.query_params
        checks = {
            "client_id": query.get("client_id") == provider.client_id,
            "redirect_uri": query.get("redirect_uri") == provider.redirect_uri,
            "response_type": query.get("response_type") == "code",
            "scope": "openid" in query.get("scope", "").split(),
            "pkce": query.get("code_challenge_method") == "S256" and bool(query.get("code_challenge")),
            "state": bool(query.get("state")),
            "nonce": bool(query.get("nonce")),
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            return HTMLResponse(f"<p>bad authorization request: {', '.join(failed)}</p>", status_code=400)
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(query[name])}">'
            for name in ("state", "nonce", "code_challenge", "redirect_uri")
        )
        return HTMLResponse(
            '<!doctype html><html lang="en"><head><title>Test provider</title></head><body><main>'
            '<h1>Test provider</h1><form method="post" action="/authorize">'
            f'{hidden}<label for="subject">Subject</label> <input id="subject" name="subject" value="">'
            '<button type="submit">Continue</button></form></main></body></html>'
        )

    async def authorize(request: Request) -> Response:
        form = await request.form()
        values = {name: str(form.get(name, "")) for name in ("state", "nonce", "code_challenge", "subject")}
        if not values["subject"]:
            return HTMLResponse("<p>no subject</p>", status_code=400)
        code = secrets.token_urlsafe(24)
        provider.grants[code] = Grant(
            values["subject"], values["nonce"], provider.redirect_uri, values["code_challenge"]
        )
        target = provider.redirect_uri + "?" + urlencode({"code": code, "state": values["state"]})
        return RedirectResponse(target, status_code=302)

    async def token(request: Request) -> Response:
        provider.token_requests += 1
        expected = (
            "Basic " + base64.b64encode(f"{provider.client_id}:{provider.client_secret}".encode()).decode()
        )
        if request.headers.get("authorization") != expected:
            return _error(401, "invalid_client")
        form = await request.form()
        grant = provider.grants.pop(str(form.get("code", "")), None)  # a code is used once
        if form.get("grant_type") != "authorization_code" or grant is None:
            return _error(400, "invalid_grant")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _error(400, "invalid_grant")
        if _s256(str(form.get("code_verifier", ""))) != grant.code_challenge:
            return _error(400, "invalid_grant")
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": provider.id_token(grant),
            }
        )

    async def misbehave(request: Request) -> Response:
        mode = (await request.json()).get("mode")
        if mode not in MODES:
            return _error(400, "unknown mode")
        provider.mode = mode
        return JSONResponse({"mode": mode})

    async def stats(_request: Request) -> Response:
        return JSONResponse({"token_requests": provider.token_requests})

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
            Route("/authorize", authorize_form, methods=["GET"]),
            Route("/authorize", authorize, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
            Route("/test/misbehave", misbehave, methods=["POST"]),
            Route("/test/stats", stats),
            Route("/health", lambda _r: JSONResponse({"status": "ok"})),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    args = parser.parse_args()
    provider = Provider(
        issuer=f"http://127.0.0.1:{args.port}",
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uri=args.redirect_uri,
    )
    uvicorn.run(build_app(provider), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
