"""Calling peers: what a peer answers is read whole, but never beyond a limit (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from identity import peer_http
from identity.peer_client import PeerClient, ResponseTooLarge

LIMIT = 64 * 1024


class _Peer(BaseHTTPRequestHandler):
    """/small: a JSON answer; /big: 1 MiB, chunked with no length; /liar: says 10 bytes long but
    announces too much; /bomb: 16 MiB of zeros compressed to a few kilobytes."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path.endswith("/echo"):  # what arrived: the path as asked (a proxy sees the whole URL)
            seen = {
                "path": self.path,
                "cookie": self.headers.get("cookie"),
                "type": self.headers.get("content-type"),
            }
            self._send(json.dumps(seen).encode(), {"content-type": "application/json"})
        elif self.path == "/cookie":
            self._send(b"{}", {"content-type": "application/json", "set-cookie": "session=peer-set; Path=/"})
        elif self.path == "/redirect":
            self._send(b"", {"location": "/small"}, status=302)
        elif self.path == "/slow":
            time.sleep(2)
            self._send(b"{}", {"content-type": "application/json"})
        elif self.path == "/hang-up":
            self.send_response(200)
            self.send_header("content-length", "1000")
            self.end_headers()
            self.wfile.write(b"{")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        elif self.path == "/small":
            body = json.dumps({"ok": True, "auth": self.headers.get("authorization", "")[:7]}).encode()
            self._send(body, {"content-type": "application/json"})
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            with contextlib.suppress(ConnectionError):  # the client hangs up once it has read enough
                for _ in range(16):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/announced":
            self.send_response(200)
            self.send_header("content-length", str(10 * LIMIT))
            self.end_headers()
            self.wfile.write(b"y" * 100)
        else:
            self._send(gzip.compress(b"\0" * (16 * 1024 * 1024)), {"content-encoding": "gzip"})

    def _send(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def peer_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _ask(url: str, max_bytes: int = LIMIT, timeout: float = 10.0) -> object:
    async def run() -> object:
        client = PeerClient("did:web:us.example", Ed25519PrivateKey.generate(), timeout=timeout)
        try:
            response = await client.request("did:web:them.example", "POST", url, json={}, max_bytes=max_bytes)
            return response.status_code, response.headers.get("content-type"), response.json()
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_an_answer_within_the_limit_arrives_whole(peer_url: str) -> None:
    assert _ask(f"{peer_url}/small") == (200, "application/json", {"ok": True, "auth": "Bearer "})


@pytest.mark.parametrize("path", ["/big", "/announced", "/bomb"])
def test_an_answer_beyond_the_limit_is_refused_while_reading(peer_url: str, path: str) -> None:
    with pytest.raises(ResponseTooLarge, match=f"more than {LIMIT}"):
        _ask(f"{peer_url}{path}")


def test_the_limit_counts_the_decoded_body(peer_url: str) -> None:
    """A compressed body is measured as it unpacks: a small download may not become a huge answer."""
    with pytest.raises(ResponseTooLarge):
        _ask(f"{peer_url}/bomb", max_bytes=1024 * 1024)


def _answer(client: PeerClient, url: str, close: bool = True, **kwargs: object) -> httpx.Response:
    async def run() -> httpx.Response:
        try:
            return await client.request("did:web:them.example", "POST", url, **kwargs)  # type: ignore[arg-type]
        finally:
            if close:
                await client.aclose()

    return asyncio.run(run())


def test_a_redirect_is_handed_back_not_followed(peer_url: str) -> None:
    """A peer may not send us elsewhere: the connector only calls the URLs it chose."""
    response = _answer(PeerClient("did:web:us.example", Ed25519PrivateKey.generate()), f"{peer_url}/redirect")
    assert (response.status_code, response.headers["location"]) == (302, "/small")


def test_cookies_a_peer_sets_are_never_sent_back(peer_url: str) -> None:
    client = PeerClient("did:web:us.example", Ed25519PrivateKey.generate())
    assert "session=peer-set" in _answer(client, f"{peer_url}/cookie", close=False).headers["set-cookie"]
    assert _answer(client, f"{peer_url}/echo", json={}).json()["cookie"] is None


def test_a_form_body_goes_url_encoded(peer_url: str) -> None:
    seen = _answer(
        PeerClient("did:web:us.example", Ed25519PrivateKey.generate()), f"{peer_url}/echo", data={"a": "b c"}
    ).json()
    assert seen["type"] == "application/x-www-form-urlencoded"


def test_one_client_serves_one_event_loop_after_another(peer_url: str) -> None:
    """A CLI command or a test may run the same client under successive ``asyncio.run`` calls."""
    client = PeerClient("did:web:us.example", Ed25519PrivateKey.generate())
    for last in (False, False, True):
        assert _answer(client, f"{peer_url}/small", close=last).json()["ok"] is True


def test_failures_are_the_httpx_errors_callers_handle(peer_url: str) -> None:
    """Whatever the HTTP library underneath, a failed exchange is an ``httpx.HTTPError`` of its kind."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        _ask(f"http://127.0.0.1:{port}/small")
    with pytest.raises(httpx.ReadTimeout):
        _ask(f"{peer_url}/slow", timeout=0.3)
    with pytest.raises(httpx.RemoteProtocolError):
        _ask(f"{peer_url}/hang-up")
    with pytest.raises(httpx.HTTPError):
        _ask("ftp://127.0.0.1/small")


def test_a_proxy_named_in_the_environment_carries_requests_except_where_no_proxy_says(
    peer_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with httpx before: ``HTTP_PROXY`` is honoured and ``NO_PROXY`` exempts hosts. The proxy
    here is the test peer itself, which then sees the whole target URL as the request path."""
    monkeypatch.setenv("HTTP_PROXY", peer_url)
    monkeypatch.setenv("NO_PROXY", "exempt.invalid")
    client = PeerClient("did:web:us.example", Ed25519PrivateKey.generate())
    assert _answer(client, "http://peer.invalid/echo").json()["path"] == "http://peer.invalid/echo"
    with pytest.raises(httpx.ConnectError):  # exempt: asked directly, and the name does not resolve
        _answer(PeerClient("did:web:us.example", Ed25519PrivateKey.generate()), "http://exempt.invalid/echo")


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    """A certificate for ``subject`` (a CA when ``issuer`` is None, else 127.0.0.1 signed by it)."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The test peer over HTTPS with a certificate from a CA of its own: (base URL, the CA's PEM file)."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test peer CA", ca_key, None)
    server = _certificate("127.0.0.1", server_key, ("Test peer CA", ca_key))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", ca_file
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_peer_whose_certificate_is_not_trusted_is_refused(tls_peer: tuple[str, Path]) -> None:
    url, _ = tls_peer
    with pytest.raises(httpx.ConnectError, match="certificate"):
        _ask(f"{url}/small")


def test_a_peer_whose_certificate_is_trusted_is_reached_over_tls(
    tls_peer: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file = tls_peer
    trusting = ssl.create_default_context(cafile=str(ca_file))
    monkeypatch.setattr(peer_http, "tls_context", lambda: trusting)
    assert _ask(f"{url}/small") == (200, "application/json", {"ok": True, "auth": "Bearer "})
