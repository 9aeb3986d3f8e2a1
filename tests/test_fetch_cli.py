"""``tessera fetch`` end to end: the real CLI against two real connector processes.

transit's operator runs ``tessera fetch CITY DATASET --purpose P -o FILE``;
the command goes through transit's Management API (catalog, negotiation,
transfer, EDR) and downloads from city's data plane. When a step stops, the
command says where each step stands and leaves no file (nor a partial one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.jsonld import EDC_NS
from tests.catalog_helpers import constraint, policy_body, rule
from tests.conftest import CliResult
from tests.negotiation_helpers import run_cli
from tests.transfer_helpers import TRANSFERS, TransferPair, transfer_pair

pytestmark = pytest.mark.slow
DATA = b"station,bikes\n" + b"".join(f"ST{i:04d},{i * 31 % 40}\n".encode() for i in range(20000))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    with transfer_pair(tmp_path_factory.mktemp("fetch"), "sqlite") as made:
        made.publish_file(
            "bike-counts",
            DATA,
            contract=policy_body("contract-bikes", [rule(constraint("purpose", "eq", "planning"))]),
        )
        made.publish_file(
            "utility-only",
            b"meter,kwh\n",
            contract=policy_body("contract-meters", [rule(constraint("membership", "eq", "utility"))]),
        )
        made.publish_file("manual-start", b"a,b\n1,2\n", transfer_approval="manual")
        made.publish_file("vanished", b"a,b\n1,2\n").unlink()  # offered, but its file is gone
        yield made


def _fetch(pair: TransferPair, dataset: str, purpose: str, output: Path, timeout: int = 30) -> CliResult:
    return run_cli(
        "fetch", pair.city.did, dataset, "--purpose", purpose, "-o", str(output),
        "--dir", str(pair.transit.data_dir), "--timeout", str(timeout),
        timeout=180,
    )  # fmt: skip


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def _transfers(pair: TransferPair, asset_id: str) -> list[dict[str, object]]:
    body = {
        "@context": {"@vocab": EDC_NS},
        "filterExpression": [{"operandLeft": "assetId", "operator": "=", "operandRight": asset_id}],
    }
    response = pair.tapi.post(f"{TRANSFERS}/request", json=body)
    assert response.status_code == 200, response.text
    found: list[dict[str, object]] = response.json()
    return found


def test_fetch_negotiates_transfers_and_downloads_the_whole_file(pair: TransferPair, tmp_path: Path) -> None:
    output = tmp_path / "bikes.csv"
    result = _fetch(pair, "bike-counts", "planning", output)
    assert result.code == 0, result.stderr
    assert output.read_bytes() == DATA
    assert f"wrote {len(DATA)} bytes to {output}" in result.stdout
    assert _leftovers(tmp_path) == []
    # Done with it: the transfer was completed, so its token serves no more.
    transfers = _transfers(pair, "bike-counts")
    assert [t["state"] for t in transfers] == ["COMPLETED"], transfers
    assert transfers[0]["purpose"] == "planning"


def test_a_refused_purpose_stops_at_the_transfer_and_writes_nothing(
    pair: TransferPair, tmp_path: Path
) -> None:
    output = tmp_path / "bikes.csv"
    output.write_bytes(b"what was there before\n")
    result = _fetch(pair, "bike-counts", "marketing", output)
    assert result.code == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = {line.split()[0]: line for line in result.stderr.splitlines()[1:] if line.strip()}
    assert "✓" in lines["catalog"]
    assert "✓ FINALIZED" in lines["negotiation"]
    assert "TERMINATED" in lines["transfer"]
    assert "purpose" in lines["transfer"]
    assert "not started" in lines["download"]
    assert output.read_bytes() == b"what was there before\n"
    assert _leftovers(tmp_path) == []


def test_a_refused_negotiation_says_why_and_goes_no_further(pair: TransferPair, tmp_path: Path) -> None:
    output = tmp_path / "meters.csv"
    result = _fetch(pair, "utility-only", "billing", output)
    assert result.code == 1, result.stdout
    lines = {line.split()[0]: line for line in result.stderr.splitlines()[1:] if line.strip()}
    assert "TERMINATED" in lines["negotiation"]
    assert "membership" in lines["negotiation"]
    assert "not started" in lines["transfer"]
    assert not output.exists()


def test_a_step_that_does_not_finish_in_time_is_reported(pair: TransferPair, tmp_path: Path) -> None:
    # city's operator must start transfers of this asset by hand; nobody does.
    output = tmp_path / "manual.csv"
    result = _fetch(pair, "manual-start", "planning", output, timeout=3)
    assert result.code == 1, result.stdout
    assert "the transfer is still REQUESTED: timed out" in result.stderr
    lines = {line.split()[0]: line for line in result.stderr.splitlines()[1:] if line.strip()}
    assert "✓ FINALIZED" in lines["negotiation"]
    assert "REQUESTED" in lines["transfer"]
    assert "timed out" in lines["transfer"]
    assert not output.exists()


def test_a_failed_download_is_reported_and_leaves_no_file(pair: TransferPair, tmp_path: Path) -> None:
    output = tmp_path / "vanished.csv"
    result = _fetch(pair, "vanished", "planning", output)
    assert result.code == 1, result.stdout
    assert "the provider answered HTTP" in result.stderr
    lines = {line.split()[0]: line for line in result.stderr.splitlines()[1:] if line.strip()}
    assert "STARTED" in lines["transfer"] or "TERMINATED" in lines["transfer"]  # as the provider left it
    assert "✗ the provider answered HTTP" in lines["download"]
    assert not output.exists()
    assert _leftovers(tmp_path) == []


def test_an_unknown_dataset_or_member_is_one_clear_error(pair: TransferPair, tmp_path: Path) -> None:
    output = tmp_path / "x.csv"
    result = _fetch(pair, "no-such-dataset", "planning", output)
    assert result.code == 1
    assert "no-such-dataset" in result.stderr
    assert "bike-counts" in result.stderr  # what is offered instead
    assert "not started" in result.stderr
    result = run_cli(
        "fetch", "did:web:nobody.example", "bike-counts", "--purpose", "planning", "-o", str(output),
        "--dir", str(pair.transit.data_dir),
    )  # fmt: skip
    assert result.code == 1
    assert "not a member" in result.stderr
    assert not output.exists()
