"""Background polling loops through a failure streak: one log line, growing waits, a recovery line."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from runtime.polling import PollFailures


class Recorder:
    """Collects what a structlog logger would be asked to log."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append(("exception", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))


def _unreachable_database_error() -> OperationalError:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x")
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("port 1 answered")


def test_a_database_outage_is_logged_once_and_polls_slow_down_until_it_ends() -> None:
    log = Recorder()
    failures = PollFailures(log, "worker poll failed", base_wait=0.5, max_wait=4.0)
    error = _unreachable_database_error()
    waits = []
    for _ in range(6):
        failures.failed(error)
        waits.append(failures.wait)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert log.lines == [
        ("warning", "worker poll failed", {"error": "OperationalError", "database": "unreachable"})
    ]
    failures.succeeded()
    assert failures.wait == 0.5
    assert log.lines[-1] == ("info", "worker poll failed: recovered", {"failed_polls": 6})
    failures.succeeded()
    assert len(log.lines) == 2  # nothing more while all is well


def test_any_other_failure_is_logged_with_its_traceback_once_per_streak() -> None:
    log = Recorder()
    failures = PollFailures(log, "worker poll failed", base_wait=0.5)
    for _ in range(3):
        try:
            raise KeyError("bug")
        except KeyError as exc:
            failures.failed(exc)
    assert [kind for kind, _, _ in log.lines] == ["exception"]
