"""Sign-in limits hold across replicas: attempts are counted in the database they share.

Two replicas of one connector (two apps, each with its own engine, on one
SQLite file or one PostgreSQL database) take turns answering a guesser: the
eleventh wrong API key within the minute is refused (429) whichever replica
gets it. Only hashes of the keys limited (client addresses, account names)
are stored, and a row goes once it has left the window.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import select

from connector.app import create_app
from runtime.ratelimit import SharedAttemptLimiter, SignInAttempt
from runtime.service import ServiceCore
from tests.conftest import Participant
from tests.consent_pages_helpers import csrf_of

ATTEMPTS = SignInAttempt.metadata.tables["sign_in_attempt"]


def test_two_replicas_share_one_sign_in_limit(
    make_connector: Callable[..., Participant], database_url: str
) -> None:
    city = make_connector("city", database_url)
    replica = ServiceCore.create(city.settings)  # a second process's engine on the same database
    try:
        with TestClient(create_app(city.core)) as first, TestClient(create_app(replica)) as second:
            csrf = csrf_of(first.get("/ui/login").text)
            second.cookies.update(first.cookies)  # one browser, its requests spread over both replicas
            statuses = [
                (first if n % 2 else second).post(
                    "/ui/login", data={"csrf_token": csrf, "api_key": f"wrong-{n}"}
                )
                for n in range(11)
            ]
            assert [s.status_code for s in statuses] == [401] * 10 + [429]
            for client in (first, second):  # either replica refuses now, even the right key
                key = city.settings.management_api_key
                assert key is not None
                limited = client.post(
                    "/ui/login", data={"csrf_token": csrf, "api_key": key.get_secret_value()}
                )
                assert limited.status_code == 429
                assert 0 < int(limited.headers["retry-after"]) <= 60
        with city.core.engine.connect() as connection:
            rows = connection.execute(select(ATTEMPTS)).all()
        assert len(rows) == 10  # refused attempts are not recorded
        assert {row.scope for row in rows} == {"operator-pages"}
        assert all("testclient" not in row.key_hash and len(row.key_hash) == 64 for row in rows)
    finally:
        replica.engine.dispose()


def test_concurrent_attempts_never_exceed_the_limit(
    make_connector: Callable[..., Participant], database_url: str
) -> None:
    city = make_connector("city", database_url)
    replica = ServiceCore.create(city.settings)
    limiter = SharedAttemptLimiter("operator-pages", 5, 60)
    try:
        engines = [city.core.engine, replica.engine] * 10
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda engine: limiter.attempt(engine, "203.0.113.7"), engines))
        assert answers.count(None) == 5, answers
    finally:
        replica.engine.dispose()


def test_rows_leave_with_the_window(make_connector: Callable[..., Participant]) -> None:
    engine = make_connector("city").core.engine
    now = [1_000.0]
    limiter = SharedAttemptLimiter("citizen-name", 2, 60, clock=lambda: now[0])
    assert limiter.attempt(engine, "alice") is None
    for n in range(100):  # other keys, once each, a second apart
        now[0] += 1
        assert limiter.attempt(engine, f"guess-{n}") is None
    with engine.connect() as connection:
        left = connection.execute(select(ATTEMPTS.c.at_ms)).scalars().all()
    assert len(left) == 60  # every attempt sweeps its scope: nothing older than the window is kept
    assert min(left) > (now[0] - 60) * 1000
