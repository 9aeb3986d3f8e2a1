"""The demo's assets, as the catalog stores them, opened for a transfer: ranges, the gate, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from catalog.assets import AssetRecord, asset_from_expanded
from catalog.jsonld import expand_management_input
from connector.dataplane.asset_stream import open_asset_stream
from connector.dataplane.gate import CLOSED_GATE_REASON, ClosedGate
from connector.dataplane.gated_stream import UnfilterableData
from connector.dataplane.sources import RangeNotParsable, RangeNotSatisfiable, SourceConfig
from connector.demo_seed import DATASETS, _asset, write_demo_files
from tests.dataplane_helpers import CONTEXT, ListGate, collect


def demo_asset(data_dir: Path, asset_id: str, **address: Any) -> AssetRecord:
    dataset = next(d for d in DATASETS if d.asset_id == asset_id)
    files = write_demo_files(data_dir, dataset.owner)
    body = _asset(dataset, files[asset_id], dataset.owner)
    body["dataAddress"].update(address)
    return asset_from_expanded(expand_management_input(body))


def read(
    asset: AssetRecord, config: SourceConfig, gate: Any = None, range_header: str | None = None
) -> tuple[bytes, Any]:
    async def run() -> tuple[bytes, Any]:
        stream = await open_asset_stream(
            asset, config, gate=gate or ClosedGate(), context=CONTEXT, range_header=range_header
        )
        try:
            return await collect(stream.chunks), stream
        finally:
            await stream.aclose()

    return asyncio.run(run())


def test_a_public_file_is_served_whole_or_by_range(tmp_path: Path) -> None:
    config = SourceConfig.for_data_dir(tmp_path)
    asset = demo_asset(tmp_path, "bike-counts")
    whole = (tmp_path / "demo-data" / "bike-counts.csv").read_bytes()
    body, stream = read(asset, config)
    assert body == whole
    assert (stream.media_type, stream.size, stream.byte_range, stream.gated) == (
        "text/csv",
        len(whole),
        None,
        None,
    )
    part, stream = read(asset, config, range_header="bytes=10-29")
    assert part == whole[10:30]
    assert (stream.size, stream.content_range) == (20, f"bytes 10-29/{len(whole)}")
    with pytest.raises(RangeNotParsable):
        read(asset, config, range_header="bytes=x-")
    with pytest.raises(RangeNotSatisfiable):
        read(asset, config, range_header=f"bytes={len(whole)}-")


def test_a_personal_asset_without_consent_service_releases_nothing(tmp_path: Path) -> None:
    asset = demo_asset(tmp_path, "card-trips")
    body, stream = read(asset, SourceConfig.for_data_dir(tmp_path), range_header="bytes=0-10")
    assert body == b""
    assert stream.byte_range is None  # no ranges over gated data
    assert stream.gated.counters.released == 0
    assert stream.gated.counters.reasons == {CLOSED_GATE_REASON: 42}  # 7 riders, 6 trips each


def test_a_personal_asset_releases_only_admitted_subjects(tmp_path: Path) -> None:
    asset = demo_asset(tmp_path, "card-trips")
    body, stream = read(asset, SourceConfig.for_data_dir(tmp_path), gate=ListGate({"card-alice"}))
    riders = {json.loads(line)["card_id"] for line in body.splitlines()}
    assert riders == {"card-alice"}
    assert (stream.gated.counters.released, stream.gated.counters.withheld) == (6, 36)


def test_a_personal_asset_in_a_format_without_records_fails_closed(tmp_path: Path) -> None:
    asset = demo_asset(tmp_path, "card-trips", mediaType="application/octet-stream")
    with pytest.raises(UnfilterableData, match="cannot be filtered record by record"):
        read(asset, SourceConfig.for_data_dir(tmp_path), gate=ListGate({"card-alice"}))
