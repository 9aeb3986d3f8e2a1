"""Calling peers: what a peer answers is read whole, but never beyond a limit (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.peer_client import PeerClient, ResponseTooLarge

LIMIT = 64 * 1024


class _Peer(BaseHTTPRequestHandler):
    """/small: a JSON answer; /big: 1 MiB, chunked with no length; /liar: says 10 bytes long but
    announces too much; /bomb: 16 MiB of zeros compressed to a few kilobytes."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path == "/small":
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

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
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


def _ask(url: str, max_bytes: int = LIMIT) -> object:
    async def run() -> object:
        client = PeerClient("did:web:us.example", Ed25519PrivateKey.generate())
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
