"""Peer requests over the network: aiohttp underneath, ``httpx`` types on the surface.

The connector's hot path sends several peer requests per negotiation or transfer. aiohttp's
client (a C HTTP parser, a plain asyncio socket underneath) costs about half the CPU of httpx's
per request, measured against the same server; see docs/negotiation.md, "Throughput". Callers
keep httpx's vocabulary: a request is an ``httpx.Request``, the answer an ``httpx.Response`` with
the body read whole, and every failure an ``httpx.HTTPError`` of the matching kind.

Behaviour kept from the httpx client this replaces: redirects are not followed; proxies come from
the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), read once per
session rather than on every request; gzip and deflate answers are decoded, and a size limit
applies to the decoded body; TLS certificates are checked against certifi's CA bundle. Cookies a
peer sets are never kept or sent back.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Mapping
from functools import cache

import aiohttp
import certifi
import httpx

# What a peer's answer may weigh unless the caller says otherwise (a catalog page is the largest).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Headers that describe the body as sent; a body handed on decoded no longer matches them.
ENCODING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_CHUNK = 64 * 1024


class ResponseTooLarge(httpx.HTTPError):
    """A peer's answer exceeded what the caller reads."""

    def __init__(self, message: str, *, request: httpx.Request) -> None:
        super().__init__(message)
        self.request = request


def check_declared(declared: str, max_bytes: int, request: httpx.Request) -> None:
    """Refuse an answer whose announced length is over the limit before reading any of it."""
    if declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(
            f"{request.url} announced {declared} bytes, more than {max_bytes}", request=request
        )


def check_read(length: int, max_bytes: int, request: httpx.Request) -> None:
    """Stop reading once more than the limit has arrived (a length can lie, chunks have none)."""
    if length > max_bytes:
        raise ResponseTooLarge(f"{request.url} sent more than {max_bytes} bytes", request=request)


@cache
def tls_context() -> ssl.SSLContext:
    """Certificates are verified against certifi's CA bundle, as httpx did (not the system store)."""
    return ssl.create_default_context(cafile=certifi.where())


class PeerSessions:
    """One aiohttp session (and its keep-alive pool) for the event loop the requests run on.

    A session belongs to the loop it was opened on; a caller on another loop (a CLI command's
    ``asyncio.run``, a test's portal) gets a session of its own, and the previous one is closed.
    """

    def __init__(self, timeout: float) -> None:
        # httpx's ``timeout=10`` meant 10 s to connect (pool wait included) and 10 s between reads.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxies: Mapping[str, str] = {}

    async def _current(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop and not session.closed:
            return session
        previous, previous_loop = session, self._loop
        self._proxies = urllib.request.getproxies()
        # Replaced before the old one is closed: a request that comes while it closes finds the new one.
        self._session = fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls_context()),
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies are resolved once (above), not looked up per request
        )
        self._loop = loop
        await _close(previous, previous_loop)
        return fresh

    def _proxy_for(self, url: httpx.URL) -> str | None:
        if not self._proxies:
            return None
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy is None or urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]  # not in typeshed
            url.host, self._proxies
        ):
            return None
        return proxy

    async def exchange(
        self, request: httpx.Request, headers: Mapping[str, str], max_bytes: int
    ) -> httpx.Response:
        """Send ``request`` with ``headers`` as given; read the answer whole, within ``max_bytes``.
        The headers come separately because an ``httpx.Request`` hands its names back in lower
        case; a peer's server should not care, but logs and test peers do."""
        session = await self._current()
        try:
            async with session.request(
                request.method,
                str(request.url),
                data=request.content or None,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
            ) as answer:
                check_declared(answer.headers.get("content-length", ""), max_bytes, request)
                body = bytearray()
                async for chunk in answer.content.iter_chunked(_CHUNK):
                    body += chunk
                    check_read(len(body), max_bytes, request)
                kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in ENCODING_HEADERS]
                status = answer.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translated(exc, request) from exc
        return httpx.Response(status, headers=kept, content=bytes(body), request=request)

    async def aclose(self) -> None:
        session, loop, self._session, self._loop = self._session, self._loop, None, None
        await _close(session, loop)


async def _close(session: aiohttp.ClientSession | None, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close ``session``, on its own ``loop`` if that loop still runs (in another thread)."""
    if session is None or session.closed:
        return
    if loop is not None and loop is not asyncio.get_running_loop() and loop.is_running():
        loop.call_soon_threadsafe(_close_on_its_loop, session)
    else:  # ours, or a finished loop's: its sockets are closed here and now
        await session.close()


_closing: set[asyncio.Task[None]] = set()  # sessions of a loop left behind, closing on it


def _close_on_its_loop(session: aiohttp.ClientSession) -> None:
    task = asyncio.ensure_future(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def translated(exc: BaseException, request: httpx.Request) -> httpx.HTTPError:
    """The httpx error a caller expects for what aiohttp raised."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(
        exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError
    ):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message, request=request)
    return httpx.TransportError(message, request=request)
