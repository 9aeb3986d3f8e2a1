"""HttpData and SensorThings sources against a real HTTP upstream on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from catalog.assets import asset_from_expanded
from catalog.jsonld import expand_management_input
from connector.dataplane.sources import (
    AddressError,
    ConsumerRequest,
    ConsumerRequestRefused,
    SourceConfig,
    SourceError,
    UpstreamError,
    UpstreamTimeout,
    open_source,
    redacted,
)
from tests.dataplane_helpers import collect, raw_tcp_server, serving

API_KEY = "upstream-secret-7f3a"
OBSERVATIONS = [
    {"@iot.id": i, "phenomenonTime": f"2026-11-01T{i % 24:02d}:00:00Z", "result": i * 10} for i in range(25)
]


async def echo(request: Request) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": sorted(request.query_params.multi_items()),
            "apiKey": request.headers.get("x-api-key"),
            "authorization": request.headers.get("authorization"),
            "body": (await request.body()).decode(),
            "contentType": request.headers.get("content-type"),
        }
    )


async def big(request: Request) -> Response:
    async def body() -> Any:
        for n in range(200):
            yield b"%06d" % n * 1000

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def hang(request: Request) -> Response:
    await asyncio.sleep(30)
    return PlainTextResponse("too late")


async def stall(request: Request) -> Response:
    async def body() -> Any:
        yield b"first bytes\n"
        await asyncio.sleep(30)
        yield b"too late\n"

    return StreamingResponse(body(), media_type="text/plain")


async def short_body(request: Request) -> Response:
    return Response(b"only this", headers={"content-length": "1000"})


async def observations(request: Request) -> Response:
    """A SensorThings service: pages of ``$top`` observations, linked by ``@iot.nextLink``."""
    if request.headers.get("x-api-key") != API_KEY:
        return JSONResponse({"error": "unauthorised"}, 401)
    stream = request.path_params["stream"]
    top = int(request.query_params.get("$top", "10"))
    skip = int(request.query_params.get("$skip", "0"))
    page: dict[str, Any] = {"value": OBSERVATIONS[skip : skip + top]}
    if skip + top < len(OBSERVATIONS):
        if stream == "(666)":
            page["@iot.nextLink"] = "http://169.254.169.254/latest/meta-data"
        elif stream == "(667)":
            page["@iot.nextLink"] = str(request.url.replace(path="/other/Datastreams(667)/Observations"))
        elif stream == "(668)":
            page["@iot.nextLink"] = str(request.url)  # the same page again, for ever
        else:
            page["@iot.nextLink"] = str(request.url.include_query_params(**{"$skip": skip + top}))
    if stream == "(669)":
        return Response(b'{"value": [1, 2', media_type="application/json")
    return JSONResponse(page)


app = Starlette(
    routes=[
        Route("/api/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/big", big),
        Route("/hang", hang),
        Route("/stall", stall),
        Route("/short", short_body),
        Route("/fail", lambda r: PlainTextResponse("boom", 500)),
        Route("/moved", lambda r: RedirectResponse("http://example.org/elsewhere")),
        Route("/sta/v1.1/Datastreams{stream}/Observations", observations),
    ]
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serving(app) as base:
        yield base


CONFIG = SourceConfig(file_roots=(), connect_timeout=5, read_timeout=5)


def pull(
    address: dict[str, Any], request: ConsumerRequest | None = None, config: SourceConfig = CONFIG
) -> tuple[str, bytes]:
    async def run() -> tuple[str, bytes]:
        source = await open_source(address, config, request)
        return source.media_type, await collect(source.chunks())

    return asyncio.run(run())


def refused(
    address: dict[str, Any], request: ConsumerRequest | None = None, config: SourceConfig = CONFIG
) -> SourceError:
    with pytest.raises(SourceError) as caught:
        pull(address, request, config)
    return caught.value


def test_http_data_sends_the_fixed_request_with_server_side_credentials(upstream: str) -> None:
    address = {
        "type": "HttpData",
        "baseUrl": f"{upstream}/api",
        "path": "stations/counts",
        "queryParams": "city=tessera&format=json",
        "authKey": "X-Api-Key",
        "authCode": API_KEY,
    }
    media_type, body = pull(address)
    assert media_type == "application/json"  # from the upstream's answer
    seen = json.loads(body)
    assert seen["method"] == "GET"
    assert seen["path"] == "/api/stations/counts"
    assert seen["query"] == [["city", "tessera"], ["format", "json"]]
    assert seen["apiKey"] == API_KEY
    assert "authCode" not in redacted(address)
    assert "authKey" not in redacted(address)


def test_secret_name_resolves_on_the_provider(upstream: str) -> None:
    config = SourceConfig(
        file_roots=(), secrets=lambda name: "Bearer from-vault" if name == "sta-token" else None
    )
    seen = json.loads(
        pull(
            {"type": "HttpData", "baseUrl": f"{upstream}/api/echo", "secretName": "sta-token"}, config=config
        )[1]
    )
    assert seen["authorization"] == "Bearer from-vault"
    error = refused(
        {"type": "HttpData", "baseUrl": f"{upstream}/api/echo", "secretName": "missing"}, config=config
    )
    assert isinstance(error, AddressError)


def test_consumer_additions_need_their_proxy_flag(upstream: str) -> None:
    fixed = {"type": "HttpData", "baseUrl": f"{upstream}/api"}
    for request, flag_name in (
        (ConsumerRequest(path="sub/path"), "proxyPath"),
        (ConsumerRequest(query=[("q", "1")]), "proxyQueryParams"),
        (ConsumerRequest(method="POST", body=b"x"), "proxyMethod"),
        (ConsumerRequest(body=b"{}"), "proxyBody"),
    ):
        error = refused(fixed, request)
        assert isinstance(error, ConsumerRequestRefused)
        assert flag_name in str(error)
        assert error.status in (400, 405)

    proxied = {
        **fixed,
        "proxyPath": "true",
        "proxyQueryParams": "true",
        "proxyMethod": "true",
        "proxyBody": "true",
    }
    request = ConsumerRequest(
        method="POST",
        path="/stations/7",
        query=[("from", "2026-11-01")],
        body=b'{"a": 1}',
        content_type="application/json",
    )
    seen = json.loads(pull(proxied, request)[1])
    assert (seen["method"], seen["path"], seen["query"]) == (
        "POST",
        "/api/stations/7",
        [["from", "2026-11-01"]],
    )
    assert (seen["body"], seen["contentType"]) == ('{"a": 1}', "application/json")


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "a/../../x",
        "%2e%2e/x",
        "a%2fb",
        "..%2F..%2Fetc",
        "a\\b",
        "//evil.example/x",
        "http://evil.example/",
    ],
)
def test_a_proxied_path_cannot_leave_the_base_url(upstream: str, path: str) -> None:
    """Each is refused (400) or, where harmless, confined: the upstream sees a path under the base."""
    address = {"type": "HttpData", "baseUrl": f"{upstream}/api/public", "proxyPath": "true"}
    try:
        _, body = pull(address, ConsumerRequest(path=path))
    except ConsumerRequestRefused as error:
        status = error.status
    else:
        status = 200
    if status != 200:
        assert status == 400
        return
    assert ".." not in path.lower().replace("%2e", ".")
    assert json.loads(body)["path"].startswith("/api/public/")


def test_http_data_streams_large_bodies_as_they_arrive(upstream: str) -> None:
    async def run() -> list[int]:
        source = await open_source({"type": "HttpData", "baseUrl": f"{upstream}/big"}, CONFIG)
        assert source.media_type == "application/x-ndjson"
        return [len(c) async for c in source.chunks()]

    sizes = asyncio.run(run())
    assert sum(sizes) == 200 * 6000
    assert len(sizes) > 1  # streamed, not read whole


def test_upstream_failures_are_clear(upstream: str) -> None:
    quick = SourceConfig(file_roots=(), connect_timeout=2, read_timeout=0.5)
    hung = refused({"type": "HttpData", "baseUrl": f"{upstream}/hang"}, config=quick)
    assert isinstance(hung, UpstreamTimeout)
    assert hung.status == 504
    failed = refused({"type": "HttpData", "baseUrl": f"{upstream}/fail"})
    assert type(failed) is UpstreamError
    assert (failed.status, str(failed)) == (502, "the upstream answered 500")
    moved = refused({"type": "HttpData", "baseUrl": f"{upstream}/moved"})
    assert "redirects are not followed" in str(moved)
    with raw_tcp_server(b"garbage that is not HTTP\r\n\r\n") as garbage:
        error = refused({"type": "HttpData", "baseUrl": garbage})
        assert "not a valid HTTP answer" in str(error)
    unreachable = refused({"type": "HttpData", "baseUrl": "http://127.0.0.1:9"})
    assert str(unreachable) == "the upstream cannot be reached"
    for error in (hung, failed, moved, unreachable):
        assert "127.0.0.1" not in str(error)  # the upstream's address stays on the provider


def test_an_upstream_that_stalls_or_stops_short_mid_body_fails_the_stream(upstream: str) -> None:
    quick = SourceConfig(file_roots=(), connect_timeout=2, read_timeout=0.5)

    async def run(path: str) -> tuple[list[bytes], Exception | None]:
        source = await open_source({"type": "HttpData", "baseUrl": f"{upstream}{path}"}, quick)
        got: list[bytes] = []
        try:
            async for chunk in source.chunks():
                got.append(chunk)
        except UpstreamError as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(run("/stall"))
    assert got == [b"first bytes\n"]
    assert isinstance(error, UpstreamTimeout)
    got, error = asyncio.run(run("/short"))
    assert isinstance(error, UpstreamError)


# ---------------------------------------------------------------- SensorThings


def sensorthings(upstream: str, stream: str, **extra: Any) -> dict[str, Any]:
    return {"type": "SensorThings", "baseUrl": f"{upstream}/sta/v1.1", "datastreamId": stream,
            "authKey": "X-Api-Key", "authCode": API_KEY, "pageSize": "10", **extra}  # fmt: skip


def test_sensorthings_follows_next_links_and_emits_ndjson(upstream: str) -> None:
    media_type, body = pull(sensorthings(upstream, "7"))
    assert media_type == "application/x-ndjson"
    assert [json.loads(line) for line in body.splitlines()] == OBSERVATIONS  # 3 pages of 10, 10, 5


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ("666", "linked outside its base URL"),  # another host (SSRF)
        ("667", "linked outside its base URL"),  # the same host, outside the base path
        ("668", "linked back to a page already read"),
        ("669", "not JSON"),
    ],
)
def test_sensorthings_never_follows_links_outside_its_base(upstream: str, stream: str, message: str) -> None:
    async def run() -> tuple[bytes, Exception]:
        got = b""
        try:
            source = await open_source(sensorthings(upstream, stream), CONFIG)
            async for chunk in source.chunks():
                got += chunk
        except UpstreamError as exc:
            return got, exc
        raise AssertionError("the stream should have failed")

    got, error = asyncio.run(run())
    assert message in str(error)
    assert "169.254" not in str(error)
    assert (
        got == b""
    )  # the first page's link is checked before the source opens: a clean 502, no partial data


def test_sensorthings_refuses_without_credentials_or_with_bad_ids(upstream: str) -> None:
    error = refused({**sensorthings(upstream, "7"), "authCode": "wrong"})
    assert str(error) == "the SensorThings service answered 401"
    bad = refused(sensorthings(upstream, "7)/../../Things(1"))
    assert isinstance(bad, AddressError)
    assert isinstance(refused({"type": "SensorThings", "baseUrl": f"{upstream}/sta/v1.1"}), AddressError)


def test_an_http_asset_as_the_catalog_stores_it(upstream: str) -> None:
    """Through the Management API's input form and the catalog's storage, then pulled with a sub-path."""
    body = {
        "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
        "@id": "counts",
        "properties": {"name": "counts"},
        "dataAddress": {"@type": "DataAddress", "type": "HttpData", "baseUrl": f"{upstream}/api/v2",
                        "proxyPath": "true", "queryParams": {"city": "tessera"}, "header:X-Api-Key": API_KEY},
    }  # fmt: skip
    stored = asset_from_expanded(expand_management_input(body)).data_address
    seen = json.loads(pull(stored, ConsumerRequest(path="stations/7"))[1])
    assert (seen["path"], seen["query"], seen["apiKey"]) == (
        "/api/v2/stations/7",
        [["city", "tessera"]],
        API_KEY,
    )
    assert "header:X-Api-Key" not in redacted(stored)
