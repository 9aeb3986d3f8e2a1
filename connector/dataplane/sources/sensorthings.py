"""SensorThings sources: the observations of one datastream of an OGC SensorThings API service.

Address fields: ``baseUrl`` (the service root, e.g. ``https://sensors.example/v1.1``),
``datastreamId``, optionally ``filter`` (an OData ``$filter``) and ``pageSize``, and the
same upstream credentials as HttpData. Pages are read one at a time (bounded in size),
following ``@iot.nextLink`` only while the link stays under ``baseUrl``: a service cannot
send the connector to another host (SSRF) or round in circles. Each observation is written
as one NDJSON line.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from connector.dataplane.sources.address import text_field
from connector.dataplane.sources.base import (
    AddressError,
    RangeNotSupported,
    Source,
    SourceConfig,
    UpstreamError,
)
from connector.dataplane.sources.ranges import ByteRange
from connector.dataplane.sources.upstream import (
    base_url_of,
    credential_headers,
    is_under,
    status_failure,
    upstream_client,
    upstream_failure,
)

NDJSON = "application/x-ndjson"
_NUMERIC_ID = re.compile(r"^\d{1,18}$")
_WHAT = "the SensorThings service"


def datastream_literal(raw: str) -> str:
    """The OData key literal of a datastream id: numbers as they are, anything else quoted."""
    if _NUMERIC_ID.fullmatch(raw):
        return raw
    if len(raw) > 200 or any(c in raw for c in "/?#\\") or not raw.isprintable():
        raise AddressError("the datastreamId of the data address is not a valid id")
    return "'" + raw.replace("'", "''") + "'"


class SensorThingsSource(Source):
    media_type = NDJSON

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        headers: dict[str, str],
        first_page: tuple[bytes, str | None],
        seen: set[str],
        config: SourceConfig,
    ) -> None:
        self._client = client
        self._base = base
        self._headers = headers
        self._first, self._next = first_page
        self._config = config
        self._seen = seen

    async def chunks(self, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        if byte_range is not None:
            raise RangeNotSupported("a SensorThings source serves no byte ranges")
        try:
            if self._first:
                yield self._first
            pages = 1
            while self._next is not None:
                pages += 1
                if pages > self._config.max_sensorthings_pages:
                    raise UpstreamError(f"{_WHAT} has more than {self._config.max_sensorthings_pages} pages")
                lines, self._next = await fetch_page(
                    self._client, self._next, self._base, self._headers, self._config, self._seen
                )
                if lines:
                    yield lines
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


async def fetch_page(
    client: httpx.AsyncClient,
    url: str,
    base: str,
    headers: dict[str, str],
    config: SourceConfig,
    seen: set[str],
) -> tuple[bytes, str | None]:
    """One page: its observations as NDJSON lines, and the next link (checked) or None."""
    seen.add(url)
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 300:
                raise status_failure(response.status_code, _WHAT)
            body = bytearray()
            async for data in response.aiter_bytes():
                body += data
                if len(body) > config.max_page_bytes:
                    raise UpstreamError(f"{_WHAT} sent a page larger than {config.max_page_bytes} bytes")
    except httpx.HTTPError as exc:
        raise upstream_failure(exc, _WHAT) from None
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{_WHAT} sent a page that is not JSON") from None
    values = page.get("value") if isinstance(page, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise UpstreamError(f"{_WHAT} sent a page without a list of observations")
    lines = b"".join(orjson.dumps(v) + b"\n" for v in values)
    link = page.get("@iot.nextLink")
    if link is None:
        return lines, None
    if not isinstance(link, str):
        raise UpstreamError(f"{_WHAT} sent a next link that is not a URL")
    absolute = urljoin(url, link)
    if not is_under(absolute, base):
        raise UpstreamError(f"{_WHAT} linked outside its base URL; the link was not followed")
    if absolute in seen:
        raise UpstreamError(f"{_WHAT} linked back to a page already read")
    return lines, absolute


async def open_sensorthings_source(address: Mapping[str, Any], config: SourceConfig) -> SensorThingsSource:
    base = base_url_of(address).rstrip("/")
    raw_id = text_field(address, "datastreamId") or text_field(address, "datastream")
    if raw_id is None:
        raise AddressError("a SensorThings data address needs datastreamId")
    page_size = text_field(address, "pageSize") or str(config.sensorthings_page_size)
    if not page_size.isdigit() or not 1 <= int(page_size) <= 10_000:
        raise AddressError("pageSize must be a number from 1 to 10000")
    query: dict[str, str] = {"$top": page_size, "$orderby": "phenomenonTime asc"}
    odata_filter = text_field(address, "filter")
    if odata_filter is not None:
        query["$filter"] = odata_filter
    url = str(httpx.URL(f"{base}/Datastreams({datastream_literal(raw_id)})/Observations", params=query))
    headers = credential_headers(address, config)
    client = upstream_client(config)
    seen: set[str] = set()
    try:
        first_page = await fetch_page(client, url, base, headers, config, seen)
    except BaseException:
        await client.aclose()
        raise
    return SensorThingsSource(client, base, headers, first_page, seen, config)
