"""Reading the times an operator or auditor gives: ISO 8601 dates or date-times, or epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class TimeError(ValueError):
    pass


def parse_time(text: str, *, end_of_day: bool = False) -> int:
    """Epoch ms of ``text``; a bare date means its start (or, with ``end_of_day``, its last millisecond)."""
    value = text.strip()
    if value.isdigit() and len(value) <= 15:
        if int(value) > MAX_TIME_MS:
            raise TimeError(f"{value} ms is after the year 9999")
        return int(value)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            moment = start + timedelta(days=1) - timedelta(milliseconds=1) if end_of_day else start
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise TimeError(
            f"{value[:40]!r} is not a date (YYYY-MM-DD), a date-time (ISO 8601) or epoch ms"
        ) from None
    return int(moment.timestamp() * 1000)
