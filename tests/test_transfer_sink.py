"""Push into the consumer's own sink, end to end between two real connector processes.

transit (the consumer) asks city (the provider) for ``HttpData-PUSH`` transfers
with no ``dataDestination``: transit's connector registers a sink (its own
public endpoint and a one-time secret) and sends that as the destination. A
complete push lands in ``<transit data_dir>/sink/``; a push cut short leaves
nothing there; a destination outside transit's registered address is refused
by city; and what a crash left half-written is removed when transit starts.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from connector.dataplane.sink import list_sinks
from tests.conftest import free_port
from tests.helpers import serving
from tests.transfer_helpers import TransferPair, query, transfer_pair, wait_state

pytestmark = pytest.mark.slow
NDJSON = b"".join(b'{"district": "D%d", "megawatts": %d}\n' % (i % 9, i * 7 % 40) for i in range(20_000))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    with transfer_pair(tmp_path_factory.mktemp("transfer-sink"), "sqlite") as made:
        yield made


class _CutShort(BaseHTTPRequestHandler):
    """An upstream that promises 2 MB and hangs up after 200 kB, every time."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(2_000_000))
        self.end_headers()
        self.wfile.write(b"x" * 200_000)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def cut_short_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _CutShort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/grid-load"
    finally:
        server.shutdown()
        server.server_close()


def _sink_files(pair: TransferPair) -> list[Path]:
    """What transit's operator sees in its sink: complete files only."""
    return sorted(p for p in (pair.transit.data_dir / "sink").glob("*") if p.is_file())


def _partials(pair: TransferPair) -> list[Path]:
    return sorted((pair.transit.data_dir / "sink" / ".partial").glob("*"))


def test_a_push_without_destination_lands_whole_in_the_consumers_sink(pair: TransferPair) -> None:
    pair.publish_file("grid-load", NDJSON, suffix=".ndjson")
    agreement_id = pair.agree("grid-load")
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)

    consumer = wait_state(pair.tapi, consumer_id, "COMPLETED")
    destination = consumer["dataDestination"]
    assert destination["endpoint"].startswith(f"{pair.transit.base_url}/sink/")  # its own public endpoint
    assert all(p["value"] == "***" for p in destination["endpointProperties"] if p["name"] == "authorization")
    received = pair.transit.data_dir / "sink" / "grid-load"
    assert received.read_bytes() == NDJSON
    [record] = [r for r in list_sinks(pair.transit.data_dir) if r.received_path == received]
    assert record.received_sha256 == hashlib.sha256(NDJSON).hexdigest()
    # The provider records COMPLETED once transit has accepted its completion message: a moment later.
    provider = wait_state(
        pair.capi, query(pair.capi, consumerPid=consumer["consumerPid"])[0]["@id"], "COMPLETED"
    )
    assert provider["bytesTransferred"] == len(NDJSON)

    # A second push under the same agreement never overwrites the first file.
    second = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)
    wait_state(pair.tapi, second, "COMPLETED")
    assert (pair.transit.data_dir / "sink" / "grid-load-1").read_bytes() == NDJSON
    assert received.read_bytes() == NDJSON
    assert _partials(pair) == []


def test_a_push_cut_short_leaves_nothing_half_written(pair: TransferPair, cut_short_upstream: str) -> None:
    pair.publish_file("grid-cut", b"", address={"type": "HttpData", "baseUrl": cut_short_upstream})
    agreement_id = pair.agree("grid-cut")
    before = _sink_files(pair)
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)

    consumer = wait_state(pair.tapi, consumer_id, "TERMINATED", timeout=90)
    assert "push failed" in consumer["errorDetail"]
    provider = query(pair.capi, consumerPid=consumer["consumerPid"])[0]
    assert provider["state"] == "TERMINATED"
    assert "push failed" in provider["errorDetail"]
    assert _sink_files(pair) == before, "no file, not even a partial one, reached the operator's sink"
    assert _partials(pair) == []
    sink_id = consumer["dataDestination"]["endpoint"].rsplit("/", 1)[-1]
    [record] = [r for r in list_sinks(pair.transit.data_dir) if r.sink_id == sink_id]
    assert record.state == "waiting"
    assert record.received_path is None


def test_a_push_endpoint_outside_the_consumers_address_is_refused(pair: TransferPair) -> None:
    pair.publish_file("grid-elsewhere", NDJSON, suffix=".ndjson")
    agreement_id = pair.agree("grid-elsewhere")
    elsewhere = {"type": "HttpData", "baseUrl": f"http://127.0.0.1:{free_port()}/collect"}
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=elsewhere)

    consumer = wait_state(pair.tapi, consumer_id, "TERMINATED")
    assert "outside your registered address space" in consumer["errorDetail"]
    assert query(pair.capi, consumerPid=consumer["consumerPid"]) == []  # city never made a transfer of it


def test_what_a_crash_left_half_written_is_removed_at_start_up(tmp_path: Path) -> None:
    with transfer_pair(tmp_path, "sqlite") as fresh:
        transit = fresh.transit
    partial_dir = transit.data_dir / "sink" / ".partial"
    registrations = transit.data_dir / "sink" / ".registrations"
    partial_dir.mkdir(parents=True, exist_ok=True)
    registrations.mkdir(parents=True, exist_ok=True)
    stale_part, stale_lock = partial_dir / f"{'a' * 32}-0000.part", registrations / f"{'a' * 32}.lock"
    fresh_part = partial_dir / f"{'b' * 32}-0000.part"
    for path in (stale_part, stale_lock, fresh_part):
        path.write_bytes(b"half a file")
    an_hour_ago = time.time() - 3600
    for path in (stale_part, stale_lock):
        os.utime(path, (an_hour_ago, an_hour_ago))

    with serving(transit.data_dir, transit.port):
        deadline = time.monotonic() + 30
        while stale_part.exists() or stale_lock.exists():
            assert time.monotonic() < deadline, "the partial upload was not removed at start-up"
            time.sleep(0.1)
        assert fresh_part.exists()  # an upload that may still be running is left alone
