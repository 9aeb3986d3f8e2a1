"""One call for the control plane: an asset's bytes for a transfer, gated when the asset is personal.

``open_asset_stream`` opens the asset's source, applies a ``Range`` header where it can, and
puts every record of a personal asset through the gate. Ranges apply to non-personal files
only: a personal asset's released bytes are not known in advance, so its ``Range`` header is
ignored (RFC 9110 allows a server to ignore it) and the filtered stream is served whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from catalog.assets import AssetRecord
from connector.dataplane.gate import GateContext, PersonalDataGate
from connector.dataplane.gated_stream import DEFAULT_BATCH_SIZE, GatedStream
from connector.dataplane.sources import (
    ConsumerRequest,
    Source,
    SourceConfig,
    StopSignal,
    open_source,
    parse_range,
)
from connector.dataplane.sources.ranges import ByteRange

LIVE_FLUSH_SECONDS = 1.0  # a live personal record waits at most this long for its gate decision


@dataclass
class AssetStream:
    """What a pull or a push sends: iterate ``chunks`` once; ``aclose`` releases the source."""

    source: Source
    chunks: AsyncIterator[bytes]
    media_type: str
    size: int | None  # bytes that will be sent, when known (never for a gated stream)
    byte_range: ByteRange | None  # the range served (answer 206 with ``content_range``), or None
    gated: GatedStream | None  # the gate's filter and counters, for a personal asset

    @property
    def content_range(self) -> str | None:
        if self.byte_range is None or self.source.size is None:
            return None
        return self.byte_range.content_range(self.source.size)

    async def aclose(self) -> None:
        await self.source.aclose()


async def open_asset_stream(
    asset: AssetRecord,
    config: SourceConfig,
    *,
    gate: PersonalDataGate,
    context: GateContext,
    request: ConsumerRequest | None = None,
    range_header: str | None = None,
    stop: StopSignal | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    decision_timeout: float = 10.0,
) -> AssetStream:
    """Open ``asset``'s data for one transfer.

    Raises ``SourceError`` (the source cannot be opened), ``RangeNotParsable`` /
    ``RangeNotSatisfiable`` (a bad ``Range`` for a file) and ``UnfilterableData`` (a personal
    asset whose media type has no records); each carries its HTTP status or reason.
    """
    source = await open_source(asset.data_address, config, request, stop)
    try:
        metadata = asset.metadata
        if metadata.personal:
            gated = GatedStream(
                gate,
                context,
                media_type=source.media_type,
                subject_field=metadata.subject_field or "",
                batch_size=batch_size,
                decision_timeout=decision_timeout,
                flush_after=LIVE_FLUSH_SECONDS if source.live else None,
            )
            return AssetStream(source, gated.filter(source.chunks()), source.media_type, None, None, gated)
        chosen = None
        if range_header is not None and source.supports_ranges and source.size is not None:
            chosen = parse_range(range_header, source.size)
        size = chosen.length if chosen is not None else source.size
        return AssetStream(source, source.chunks(chosen), source.media_type, size, chosen, None)
    except BaseException:
        await source.aclose()
        raise
