"""Sources: an asset's data address → an opened ``Source`` streaming its bytes.

``open_source`` reads the address's ``type`` (EDC's ``File``/``HttpData``, Tessera's
``SensorThings`` and ``Mqtt``) and opens the matching source. It is async because some
sources connect before they answer (an HTTP upstream's status, a broker subscription), so
that a failure becomes a clear status before the consumer's response has begun.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.dataplane.sources.address import plain_address, redacted, text_field
from connector.dataplane.sources.base import (
    AddressError,
    ConsumerRequest,
    ConsumerRequestRefused,
    RangeNotSupported,
    Source,
    SourceConfig,
    SourceError,
    SourceNotFound,
    StopSignal,
    UpstreamError,
    UpstreamTimeout,
    secret_file_resolver,
)
from connector.dataplane.sources.files import FileSource, open_file_source
from connector.dataplane.sources.http import HttpSource, open_http_source
from connector.dataplane.sources.mqtt import MqttSource, open_mqtt_source
from connector.dataplane.sources.ranges import (
    ByteRange,
    RangeError,
    RangeNotParsable,
    RangeNotSatisfiable,
    parse_range,
)
from connector.dataplane.sources.sensorthings import SensorThingsSource, open_sensorthings_source

__all__ = [
    "AddressError",
    "ByteRange",
    "ConsumerRequest",
    "ConsumerRequestRefused",
    "FileSource",
    "HttpSource",
    "MqttSource",
    "RangeError",
    "RangeNotParsable",
    "RangeNotSatisfiable",
    "RangeNotSupported",
    "SensorThingsSource",
    "Source",
    "SourceConfig",
    "SourceError",
    "SourceNotFound",
    "StopSignal",
    "UpstreamError",
    "UpstreamTimeout",
    "open_source",
    "parse_range",
    "plain_address",
    "redacted",
    "secret_file_resolver",
    "source_kind",
]


def source_kind(address: Mapping[str, Any]) -> str:
    """The address's ``type`` (bare or expanded form), or AddressError."""
    kind = text_field(plain_address(address), "type")
    if kind is None:
        raise AddressError("the data address has no type")
    return kind


async def open_source(
    address: Mapping[str, Any],
    config: SourceConfig,
    request: ConsumerRequest | None = None,
    stop: StopSignal | None = None,
) -> Source:
    """Open the source an asset's data address names.

    ``request`` is what the consumer's pull adds (HttpData proxy options only); ``stop`` ends a
    live source (an ``asyncio.Event`` or a callable returning True once the transfer must stop).
    Raises ``SourceError`` (with ``status``) when the source cannot be opened.
    """
    plain = plain_address(address)
    kind = source_kind(plain)
    if kind == "File":
        return open_file_source(plain, config)
    if kind == "HttpData":
        return await open_http_source(plain, config, request)
    if kind in ("SensorThings", "OgcSensorThings"):
        return await open_sensorthings_source(plain, config)
    if kind in ("Mqtt", "MQTT"):
        return await open_mqtt_source(plain, config, stop)
    raise AddressError(f"data addresses of type {kind!r} are not supported")
