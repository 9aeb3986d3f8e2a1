"""The federated catalog cache: what other members publish, as our last crawl of them saw it.

Storage and search only; fetching catalogs over DSP is ``connector.federated_crawler``'s job.
A crawl replaces one member's datasets in one transaction, so a search sees
either the old catalog or the new one, and a failed crawl leaves the old one.

Search works the same on SQLite and PostgreSQL: text is case-folded in Python
when stored and when searched (the databases' own ``lower`` and ``LIKE``
disagree outside ASCII), themes are matched exactly with ``replace`` (which is
case-sensitive on both), and ordering uses byte order on both.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlmodel import Session

from catalog.jsonld import DCAT_NS, DCT_NS, TESSERA_NS
from catalog.models import CachedDatasetRow, CrawlStatusRow
from catalog.queryspec import table_of

MAX_DATASET_ID = 256
MAX_TITLE = 512
MAX_DESCRIPTION = 10_000
MAX_LABEL = 512
MAX_LICENSE = 1024
MAX_MEDIA_TYPE = 256
MAX_KEYWORDS = 50
MAX_KEYWORD = 100
MAX_THEMES = 20
MAX_ERROR = 2000
MAX_SEARCH_LIMIT = 200
MAX_SEARCH_WORDS = 32
FOAF_NAME = "http://xmlns.com/foaf/0.1/name"

# Each DCAT field under the key Tessera's DSP catalog uses, then its full IRI (other connectors).
TITLE_KEYS = ("dct:title", DCT_NS + "title")
DESCRIPTION_KEYS = ("dct:description", DCT_NS + "description")
KEYWORD_KEYS = ("dcat:keyword", DCAT_NS + "keyword")
THEME_KEYS = ("dcat:theme", DCAT_NS + "theme")
PUBLISHER_KEYS = ("dct:publisher", DCT_NS + "publisher")
LICENSE_KEYS = ("dct:license", DCT_NS + "license")
MEDIA_TYPE_KEYS = ("dcat:mediaType", DCAT_NS + "mediaType")
PERSONAL_KEYS = (TESSERA_NS + "personal", "tessera:personal")

_dataset = table_of(CachedDatasetRow).c
_status = table_of(CrawlStatusRow).c


class DatasetError(ValueError):
    """A dataset in a member's catalog that cannot be cached (it has no usable id)."""


@dataclass(frozen=True)
class CachedDataset:
    participant_did: str
    dataset_id: str
    title: str | None
    description: str | None
    keywords: tuple[str, ...]
    publisher: str | None
    themes: tuple[str, ...]
    license: str | None
    personal: bool
    media_type: str | None
    raw: dict[str, Any]
    fetched_at: datetime


@dataclass(frozen=True)
class SearchPage:
    items: list[CachedDataset]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class CrawlStatusView:
    participant_did: str
    last_attempt: datetime
    last_success: datetime | None
    last_error: str | None
    dataset_count: int


# ---------------------------------------------------------------- reading a DSP dataset


def _plain(item: Any) -> Any:
    """A JSON-LD value as plain JSON: ``{"@value": v}`` → v, ``{"@id": i}`` → i, a node as is."""
    if isinstance(item, dict):
        if "@value" in item:
            return item["@value"]
        if "@id" in item:
            return item["@id"]
    return item


def _values(dataset: Mapping[str, Any], keys: Sequence[str]) -> list[Any]:
    for key in keys:
        if key in dataset:
            found = dataset[key]
            return [_plain(v) for v in (found if isinstance(found, list) else [found]) if v is not None]
    return []


def storable(text: str) -> str:
    """``text`` without what a database refuses: NUL (PostgreSQL) and lone surrogates (UTF-8)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _text(value: Any, limit: int, *, one_line: bool) -> str | None:
    """Storable text, on one line where asked, cut to ``limit``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = storable(str(value))
    text = " ".join(text.split()) if one_line else text.strip()
    return text[:limit] or None


def _first_text(dataset: Mapping[str, Any], keys: Sequence[str], limit: int, *, one_line: bool) -> str | None:
    for value in _values(dataset, keys):
        text = _text(value, limit, one_line=one_line)
        if text:
            return text
    return None


def _labels(values: Iterable[Any], limit: int, count: int) -> tuple[str, ...]:
    labels: list[str] = []
    for value in values:
        text = _text(value, limit, one_line=True)
        if text and text not in labels:
            labels.append(text)
        if len(labels) == count:
            break
    return tuple(labels)


def _publisher(dataset: Mapping[str, Any]) -> str | None:
    for value in _values(dataset, PUBLISHER_KEYS):
        if isinstance(value, dict):  # an organisation node without @id: its name
            value = next(iter(_values(value, ("foaf:name", FOAF_NAME, "name"))), None)
        text = _text(value, MAX_LABEL, one_line=True)
        if text:
            return text
    return None


def _personal(dataset: Mapping[str, Any]) -> bool:
    values = _values(dataset, PERSONAL_KEYS)
    value = values[0] if values else False
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def dataset_from_dsp(participant_did: str, dataset: Mapping[str, Any], fetched_at: datetime) -> CachedDataset:
    """The cache entry of one ``Dataset`` of a DSP catalog; the dataset itself is kept as ``raw``."""
    dataset_id = dataset.get("@id")
    if not isinstance(dataset_id, str) or not dataset_id.strip() or storable(dataset_id) != dataset_id:
        raise DatasetError(f"a dataset has no usable @id: {str(dataset_id)[:80]!r}")
    if len(dataset_id) > MAX_DATASET_ID:
        raise DatasetError(f"dataset id {dataset_id[:40]!r}… is longer than {MAX_DATASET_ID} characters")
    return CachedDataset(
        participant_did=participant_did,
        dataset_id=dataset_id,
        title=_first_text(dataset, TITLE_KEYS, MAX_TITLE, one_line=True),
        description=_first_text(dataset, DESCRIPTION_KEYS, MAX_DESCRIPTION, one_line=False),
        keywords=_labels(_values(dataset, KEYWORD_KEYS), MAX_KEYWORD, MAX_KEYWORDS),
        publisher=_publisher(dataset),
        themes=_labels(_values(dataset, THEME_KEYS), MAX_LABEL, MAX_THEMES),
        license=_first_text(dataset, LICENSE_KEYS, MAX_LICENSE, one_line=True),
        personal=_personal(dataset),
        media_type=_first_text(dataset, MEDIA_TYPE_KEYS, MAX_MEDIA_TYPE, one_line=True),
        raw=dict(dataset),
        fetched_at=fetched_at,
    )


# ---------------------------------------------------------------- rows


def fold(text: str) -> str:
    """The form text is compared in: compatibility-normalised and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _lines(values: Sequence[str]) -> str:
    """One value per line, with a newline before the first and after the last ('' for none)."""
    return "\n" + "\n".join(values) + "\n" if values else ""


def _unlines(text: str) -> tuple[str, ...]:
    return tuple(value for value in text.split("\n") if value)


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they are stored in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _row_values(dataset: CachedDataset) -> dict[str, Any]:
    searchable = [dataset.title or "", dataset.description or "", *dataset.keywords]
    return {
        "participant_did": dataset.participant_did,
        "dataset_id": dataset.dataset_id,
        "title": dataset.title,
        "description": dataset.description,
        "keywords": _lines(dataset.keywords),
        "publisher": dataset.publisher,
        "themes": _lines(dataset.themes),
        "license": dataset.license,
        "personal": dataset.personal,
        "media_type": dataset.media_type,
        "raw": json.dumps(dataset.raw, separators=(",", ":")),  # ASCII: any lone surrogate escaped
        "fetched_at": dataset.fetched_at,
        "search_text": fold("\n".join(searchable)),
        "title_key": fold(dataset.title or "")[:MAX_TITLE],
    }


def _view(row: CachedDatasetRow) -> CachedDataset:
    raw: dict[str, Any] = json.loads(row.raw)
    return CachedDataset(
        participant_did=row.participant_did,
        dataset_id=row.dataset_id,
        title=row.title,
        description=row.description,
        keywords=_unlines(row.keywords),
        publisher=row.publisher,
        themes=_unlines(row.themes),
        license=row.license,
        personal=row.personal,
        media_type=row.media_type,
        raw=raw,
        fetched_at=_aware(row.fetched_at),
    )


def _status_view(row: CrawlStatusRow) -> CrawlStatusView:
    return CrawlStatusView(
        participant_did=row.participant_did,
        last_attempt=_aware(row.last_attempt),
        last_success=_aware(row.last_success) if row.last_success else None,
        last_error=row.last_error,
        dataset_count=row.dataset_count,
    )


def _status_row(session: Session, participant_did: str, attempted_at: datetime) -> CrawlStatusRow:
    row = session.get(CrawlStatusRow, participant_did)
    if row is None:
        row = CrawlStatusRow(participant_did=participant_did, last_attempt=attempted_at)
        session.add(row)
    row.last_attempt = attempted_at
    return row


# ---------------------------------------------------------------- writing


def replace_member_datasets(
    session: Session,
    participant_did: str,
    datasets: Sequence[CachedDataset],
    *,
    fetched_at: datetime,
    note: str | None = None,
) -> int:
    """Make ``datasets`` the whole cached catalog of ``participant_did``, in one transaction.

    ``note`` (e.g. "stopped after 10000 datasets") is kept as the status's
    ``last_error``: the crawl succeeded, but not entirely as asked.
    """
    unique = {d.dataset_id: d for d in datasets if d.participant_did == participant_did}
    try:
        session.execute(delete(CachedDatasetRow).where(_dataset.participant_did == participant_did))
        if unique:
            session.execute(insert(CachedDatasetRow), [_row_values(d) for d in unique.values()])
        status = _status_row(session, participant_did, fetched_at)
        status.last_success = fetched_at
        status.last_error = storable(note)[:MAX_ERROR] if note else None
        status.dataset_count = len(unique)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(unique)


def record_crawl_failure(
    session: Session, participant_did: str, error: str, *, attempted_at: datetime
) -> None:
    """Note a failed crawl; the member's cached datasets stay as they were."""
    try:
        status = _status_row(session, participant_did, attempted_at)
        status.last_error = storable(error)[:MAX_ERROR] or "the crawl failed"
        session.commit()
    except BaseException:
        session.rollback()
        raise


def forget_participants(session: Session, keep: Collection[str]) -> list[str]:
    """Drop the cache and status of every participant not in ``keep`` (no longer a member)."""
    gone = sorted(
        set(session.scalars(select(_status.participant_did)))
        | set(session.scalars(select(_dataset.participant_did).distinct()))
    )
    gone = [did for did in gone if did not in keep]
    if gone:
        session.execute(delete(CachedDatasetRow).where(_dataset.participant_did.in_(gone)))
        session.execute(delete(CrawlStatusRow).where(_status.participant_did.in_(gone)))
        session.commit()
    return gone


# ---------------------------------------------------------------- reading


def crawl_status(session: Session) -> list[CrawlStatusView]:
    rows = session.scalars(select(CrawlStatusRow).order_by(_status.participant_did))
    return [_status_view(row) for row in rows]


def get_crawl_status(session: Session, participant_did: str) -> CrawlStatusView | None:
    row = session.get(CrawlStatusRow, participant_did)
    return _status_view(row) if row else None


def get_cached_dataset(session: Session, participant_did: str, dataset_id: str) -> CachedDataset | None:
    row = session.get(CachedDatasetRow, (participant_did, dataset_id))
    return _view(row) if row else None


def _label_filter(value: str) -> str:
    return " ".join(storable(value).split())


def _holds(column: Any, needle: str) -> ColumnElement[bool]:
    # ``replace`` is case-sensitive on SQLite and PostgreSQL alike, unlike LIKE.
    condition: ColumnElement[bool] = func.replace(column, needle, "") != column
    return condition


def search_conditions(
    text: str | None = None,
    *,
    publisher: str | None = None,
    theme: str | None = None,
    license: str | None = None,
    personal: bool | None = None,
    participant: str | None = None,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    words = list(dict.fromkeys(fold(storable(text or "")).split()))[:MAX_SEARCH_WORDS]
    for word in words:  # every word, somewhere in title, description or keywords
        conditions.append(_dataset.search_text.contains(word, autoescape=True))
    if publisher is not None:
        conditions.append(_dataset.publisher == _label_filter(publisher))
    if theme is not None:
        conditions.append(_holds(_dataset.themes, "\n" + _label_filter(theme) + "\n"))
    if license is not None:
        conditions.append(_dataset.license == _label_filter(license))
    if personal is not None:
        conditions.append(_dataset.personal == personal)
    if participant is not None:
        conditions.append(_dataset.participant_did == storable(participant))
    return conditions


def _byte_order(session: Session, column: Any) -> Any:
    # PostgreSQL sorts by the database's locale unless told otherwise; SQLite sorts by bytes.
    return column.collate("C") if session.get_bind().dialect.name == "postgresql" else column


def search_federated(
    session: Session,
    text: str | None = None,
    *,
    publisher: str | None = None,
    theme: str | None = None,
    license: str | None = None,
    personal: bool | None = None,
    participant: str | None = None,
    offset: int = 0,
    limit: int = 20,
) -> SearchPage:
    """Cached datasets matching every given condition, by title (untitled last), then participant.

    ``text``: each word must occur (case-insensitively, as a substring) in the
    title, the description or a keyword. The other filters match exactly.
    """
    if offset < 0 or not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise ValueError(f"offset must be at least 0 and limit between 1 and {MAX_SEARCH_LIMIT}")
    conditions = search_conditions(
        text, publisher=publisher, theme=theme, license=license, personal=personal, participant=participant
    )
    total = session.scalar(select(func.count()).select_from(CachedDatasetRow).where(*conditions)) or 0
    statement = (
        select(CachedDatasetRow)
        .where(*conditions)
        .order_by(
            _dataset.title_key == "",
            _byte_order(session, _dataset.title_key),
            _byte_order(session, _dataset.participant_did),
            _byte_order(session, _dataset.dataset_id),
        )
        .offset(offset)
        .limit(limit)
    )
    items = [_view(row) for row in session.scalars(statement)]
    return SearchPage(items=items, total=int(total), offset=offset, limit=limit)
