"""The auditor's timeline: which log entries match the filters, newest first, and transfers per day.

Filtering reads ``audit_log_index``, a projection of the log that ``refresh_index`` extends
with the entries appended since it last ran (each entry is indexed once, O(new entries)).
What the page shows, hashes and proves is always the leaf's own stored entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import BigInteger, Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from catalog.models import Asset
from connector.auditor.models import AuditFacetRow, AuditIndexRow
from connector.translog.models import LogLeafRow

INDEX = AuditIndexRow.__table__  # type: ignore[attr-defined]
FACET = AuditFacetRow.__table__  # type: ignore[attr-defined]
FACET_FIELDS = ("counter_party", "dataset")
LEAF = LogLeafRow.__table__  # type: ignore[attr-defined]
ASSET = Asset.__table__  # type: ignore[attr-defined]
PAGE_SIZE = 25
MAX_PAGE = 100_000
INDEX_BATCH = 1000
MAX_INDEX_PER_REFRESH = 20_000  # a page load indexes at most this many (2-3 s on a loaded machine)
DAY_MS = 86_400_000
DEFAULT_CHART_DAYS = 30
MAX_CHART_DAYS = 366
MAX_FILTER_TEXT = 512
TRANSFER_DONE = "transfer.completed"
KIND_GROUPS = {
    "all": "All entries",
    "transfers": "Transfers and receipts",
    "agreements": "Agreements",
    "refusals": "Refusals",
}


# ------------------------------------------------------------------ the index


def _text(value: Any) -> str | None:
    return value[:MAX_FILTER_TEXT] if isinstance(value, str) and value else None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def index_values(entry: Mapping[str, Any], kind: str, personal_datasets: set[str]) -> dict[str, Any]:
    """The filterable facts of one entry (what the timeline filters and the chart count)."""
    counter_party = _text(entry.get("counterParty"))
    if counter_party is None and kind.startswith("agreement"):
        # Our side is ``role``; the counter-party is the other one.
        other = "consumer" if entry.get("role") == "provider" else "provider"
        counter_party = _text(entry.get(other))
    dataset = _text(entry.get("dataset"))
    consent = entry.get("consent")
    personal = isinstance(consent, dict) or (dataset is not None and dataset in personal_datasets)
    return {
        "kind": kind,
        "counter_party": counter_party,
        "dataset": dataset,
        "agreement_id": _text(entry.get("agreementId")),
        "transfer_id": _text(entry.get("transferId")),
        "personal": personal,
        "bytes": _number(entry.get("bytes")),
        "records": _number(entry.get("records")),
    }


def _personal_datasets(conn: Connection) -> set[str]:
    """Datasets that carry personal data: our assets marked personal, and any logged with consent counts."""
    local = conn.execute(select(ASSET.c.id).where(ASSET.c.personal.is_(True))).scalars()
    logged = conn.execute(
        select(INDEX.c.dataset).where(INDEX.c.personal.is_(True), INDEX.c.dataset.is_not(None)).distinct()
    ).scalars()
    return {*local, *logged}


def refresh_index(engine: Engine, max_entries: int = MAX_INDEX_PER_REFRESH) -> int:
    """Index (up to ``max_entries`` of) the entries appended since the last refresh; how many were indexed.

    An entry is about personal data when it carries consent counts or names a dataset that
    does (ours marked personal, or one logged with consent counts before or in this batch:
    then its earlier entries, e.g. the transfer's start, are marked too). Another process
    refreshing at the same moment makes one of the two stop early (the primary key refuses
    the second copy); the next refresh carries on.
    """
    indexed = 0
    while indexed < max_entries:
        try:
            with engine.begin() as conn:
                last = conn.execute(select(func.max(INDEX.c.idx))).scalar()
                rows = conn.execute(
                    select(LEAF.c.idx, LEAF.c.entry, LEAF.c.kind, LEAF.c.created_at)
                    .where(LEAF.c.idx > (-1 if last is None else int(last)))
                    .order_by(LEAF.c.idx)
                    .limit(INDEX_BATCH)
                ).all()
                if not rows:
                    return indexed
                personal = _personal_datasets(conn)
                known = set(personal)
                values = []
                for row in rows:
                    try:
                        entry = json.loads(row.entry)
                    except ValueError:
                        entry = {}
                    facts = index_values(entry if isinstance(entry, dict) else {}, row.kind, personal)
                    if facts["personal"] and facts["dataset"]:
                        personal.add(facts["dataset"])
                    values.append({"idx": int(row.idx), "created_at": int(row.created_at), **facts})
                for value in values:  # entries of the batch logged before their dataset showed consent
                    value["personal"] = value["personal"] or value["dataset"] in personal
                conn.execute(insert(INDEX), values)
                _add_facets(conn, values)
                if personal - known:
                    conn.execute(
                        update(INDEX)
                        .where(INDEX.c.dataset.in_(sorted(personal - known)), INDEX.c.personal.is_(False))
                        .values(personal=True)
                    )
                indexed += len(values)
        except IntegrityError:
            return indexed
    return indexed


def _add_facets(conn: Connection, values: list[dict[str, Any]]) -> None:
    """Remember the counter-parties and datasets this batch names that are not known yet."""
    named = {(f, v[f]) for v in values for f in FACET_FIELDS if v[f]}
    if not named:
        return
    known = {(r.field, r.value) for r in conn.execute(select(FACET.c.field, FACET.c.value))}
    new = sorted(named - known)
    if new:
        conn.execute(insert(FACET), [{"field": f, "value": v} for f, v in new])


def unindexed(conn: Connection) -> int:
    """How many logged entries the index does not hold yet (a first visit to a large log)."""
    last = conn.execute(select(func.max(INDEX.c.idx))).scalar()
    size = conn.execute(select(func.max(LEAF.c.idx))).scalar()
    return (-1 if size is None else int(size)) - (-1 if last is None else int(last))


# ------------------------------------------------------------------ filters


def _parse_date(text: str, label: str, errors: list[str]) -> date | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    errors.append(f"The {label} date {text[:40]!r} is not a date like 2026-11-21.")
    return None


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class TimelineFilter:
    counter_party: str = ""
    dataset: str = ""
    date_from: date | None = None
    date_to: date | None = None
    personal_only: bool = False
    kinds: str = "all"
    page: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> tuple[TimelineFilter, list[str]]:
        """The filter a query string asks for, and what is wrong with it (bad parts are ignored)."""
        errors: list[str] = []
        page_text = query.get("page", "1")
        page = min(max(int(page_text), 1), MAX_PAGE) if page_text.isdigit() and len(page_text) < 7 else 1
        kinds = query.get("kind", "all")
        if kinds not in KIND_GROUPS:
            errors.append(f"There is no kind of entry {kinds[:40]!r}.")
            kinds = "all"
        date_from = _parse_date(query.get("from", ""), "from", errors)
        date_to = _parse_date(query.get("to", ""), "to", errors)
        if date_from and date_to and date_from > date_to:
            errors.append("The from date is after the to date.")
            date_from = date_to = None
        return (
            cls(
                counter_party=query.get("counter_party", "")[:MAX_FILTER_TEXT],
                dataset=query.get("dataset", "")[:MAX_FILTER_TEXT],
                date_from=date_from,
                date_to=date_to,
                personal_only=query.get("personal") == "yes",
                kinds=kinds,
                page=page,
            ),
            errors,
        )

    @property
    def active(self) -> bool:
        return self != TimelineFilter(page=self.page)

    def query_string(self, page: int | None = None) -> str:
        params = {
            "counter_party": self.counter_party,
            "dataset": self.dataset,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "personal": "yes" if self.personal_only else "",
            "kind": "" if self.kinds == "all" else self.kinds,
            "page": str(page) if page and page > 1 else "",
        }
        return urlencode({k: v for k, v in params.items() if v})

    def time_range(self) -> tuple[int | None, int | None]:
        """[from, to) in epoch ms (whole UTC days, both dates included)."""
        start = day_start_ms(self.date_from) if self.date_from else None
        end = day_start_ms(self.date_to + timedelta(days=1)) if self.date_to else None
        return start, end

    def conditions(self, *, with_kinds: bool = True) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.counter_party:
            where.append(INDEX.c.counter_party == self.counter_party)
        if self.dataset:
            where.append(INDEX.c.dataset == self.dataset)
        if self.personal_only:
            where.append(INDEX.c.personal.is_(True))
        start, end = self.time_range()
        if start is not None:
            where.append(INDEX.c.created_at >= start)
        if end is not None:
            where.append(INDEX.c.created_at < end)
        if with_kinds and self.kinds == "transfers":
            where.append(or_(INDEX.c.kind.like("transfer.%"), INDEX.c.kind.like("receipt%")))
        elif with_kinds and self.kinds == "agreements":
            where.append(INDEX.c.kind.like("agreement.%"))
        elif with_kinds and self.kinds == "refusals":
            where.append(INDEX.c.kind == "refusal")
        return where


def matching_indexes(conn: Connection, wanted: TimelineFilter) -> tuple[list[int], bool]:
    """One page of matching entry indexes, newest first, and whether another page follows."""
    rows = conn.execute(
        select(INDEX.c.idx)
        .where(and_(True, *wanted.conditions()))
        .order_by(INDEX.c.idx.desc())
        .offset((wanted.page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    ).scalars()
    found = [int(i) for i in rows]
    return found[:PAGE_SIZE], len(found) > PAGE_SIZE


def index_facts(conn: Connection, indexes: list[int]) -> dict[int, dict[str, Any]]:
    if not indexes:
        return {}
    rows = conn.execute(select(INDEX).where(INDEX.c.idx.in_(indexes)))
    return {int(r.idx): dict(r._mapping) for r in rows}


def choices(conn: Connection) -> tuple[list[str], list[str]]:
    """The counter-parties and datasets the log names (for the filter's drop-downs)."""
    found: dict[str, list[str]] = {f: [] for f in FACET_FIELDS}
    for row in conn.execute(select(FACET.c.field, FACET.c.value).order_by(FACET.c.value).limit(2000)):
        found[row.field].append(row.value)
    return found["counter_party"], found["dataset"]


# ------------------------------------------------------------------ transfers per day


@dataclass(frozen=True)
class DayTotal:
    day: date
    transfers: int
    bytes: int


@dataclass(frozen=True)
class DailyTotals:
    days: list[DayTotal]
    clipped: bool  # the range asked for was longer than MAX_CHART_DAYS

    @property
    def transfers(self) -> int:
        return sum(d.transfers for d in self.days)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.days)


def chart_days(wanted: TimelineFilter, today: date) -> tuple[date, date, bool]:
    """The first and last day the chart shows, and whether the range was clipped."""
    last = wanted.date_to or today
    first = wanted.date_from or (last - timedelta(days=DEFAULT_CHART_DAYS - 1))
    if (last - first).days + 1 > MAX_CHART_DAYS:
        return last - timedelta(days=MAX_CHART_DAYS - 1), last, True
    return first, last, False


def daily_totals(conn: Connection, wanted: TimelineFilter, today: date) -> DailyTotals:
    """Completed transfers and their bytes per UTC day, with the same filters as the timeline."""
    first, last, clipped = chart_days(wanted, today)
    ranged = replace(wanted, date_from=first, date_to=last, kinds="all")
    day = INDEX.c.created_at.op("/", return_type=BigInteger)(DAY_MS)
    rows = conn.execute(
        select(day.label("day"), func.count(), func.coalesce(func.sum(INDEX.c.bytes), 0))
        .where(INDEX.c.kind == TRANSFER_DONE, *ranged.conditions(with_kinds=False))
        .group_by(day)
    ).all()
    by_day = {int(r[0]): (int(r[1]), int(r[2])) for r in rows}
    epoch = date(1970, 1, 1)
    days = []
    current = first
    while current <= last:
        transfers, size = by_day.get((current - epoch).days, (0, 0))
        days.append(DayTotal(current, transfers, size))
        current += timedelta(days=1)
    return DailyTotals(days, clipped)
