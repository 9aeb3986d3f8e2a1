"""The Management API's database work never holds up a connector's event loop.

One event loop serves every peer, page and delivery worker of a connector. A
route that wrote to the database on it would stall all of them for as long as
the write waits: here a real ``tessera serve`` process on SQLite, whose
database another process holds locked for a while. A Management API write
waits for the lock (and then succeeds); meanwhile the same connector answers
``/health`` at once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from catalog.jsonld import EDC_NS
from tests.catalog_helpers import ASSETS, POLICIES, policy_body, rule
from tests.conftest import free_port
from tests.negotiation_helpers import Node, run_cli, running

HELD_SECONDS = 2.0  # well under the connector's 5 s busy timeout: the waiting write then succeeds
PROMPT_SECONDS = 0.5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node("city", tmp_path_factory.mktemp("loop") / "city", free_port())
    made = run_cli("init", "--dir", str(node.data_dir), "--name", "city", "--port", str(node.port))
    assert made.code == 0, made.stderr
    with ExitStack() as stack:
        with running(stack, node):
            pass
        yield node


def _database_file(node: Node) -> Path:
    url = node.settings.resolved_database_url
    assert url.startswith("sqlite:///"), url
    return Path(url.removeprefix("sqlite:///"))


def _asset(asset_id: str) -> dict[str, object]:
    return {
        "@context": {"@vocab": EDC_NS},
        "@id": asset_id,
        "properties": {"name": asset_id},
        "dataAddress": {"type": "HttpData", "baseUrl": f"https://data.example.org/{asset_id}"},
    }


WRITES: dict[str, Callable[[httpx.Client, str], httpx.Response]] = {
    "create an asset": lambda api, name: api.post(ASSETS, json=_asset(name)),
    "replace a policy": lambda api, name: api.put(POLICIES, json=policy_body("open", [rule()])),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_waiting_for_the_database_does_not_stall_the_connector(city: Node, write: str) -> None:
    with city.api() as api:
        created = api.post(POLICIES, json=policy_body("open", [rule()]))
        assert created.status_code in (200, 409), created.text
        answers: list[httpx.Response] = []
        locker = sqlite3.connect(_database_file(city), isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")  # the write lock, as another process's long write holds it
            started = time.monotonic()
            writer = threading.Thread(target=lambda: answers.append(WRITES[write](city.api(), f"a-{write}")))
            writer.start()
            time.sleep(0.3)  # the write is waiting for the lock now
            assert writer.is_alive(), f"the write did not wait: {answers}"
            asked = time.monotonic()
            health = httpx.get(f"{city.base_url}/health", timeout=10)
            answered = time.monotonic() - asked
            assert health.status_code == 200
            assert answered < PROMPT_SECONDS, f"/health took {answered:.2f} s while a write waited"
            time.sleep(max(0.0, HELD_SECONDS - (time.monotonic() - started)))
            assert writer.is_alive(), "the write did not wait for the lock"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        writer.join(timeout=10)
    [answer] = answers
    assert answer.status_code in (200, 204), answer.text  # it waited, then went through
