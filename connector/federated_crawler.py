"""Crawling the members' DSP catalogs into the federated catalog cache.

Each member is asked for its whole catalog at the DSP URL registered for it
(with our identity, so it shows what its access policies let us see), page
by page along its ``Link: rel="next"`` headers. A next link is only followed
when it is the catalog endpoint under that same registered URL; anything else
stops the crawl there. The work is bounded (pages and datasets per member),
every page is checked against the DSP catalog schema, and a member's cache is
replaced in one transaction: a failed crawl keeps the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, urljoin, urlsplit

from sqlalchemy import Engine
from sqlmodel import Session

from catalog.federated import (
    CachedDataset,
    DatasetError,
    dataset_from_dsp,
    forget_participants,
    get_crawl_status,
    record_crawl_failure,
    replace_member_datasets,
)
from catalog.queryspec import QuerySpec
from connector.dsp import schemas
from connector.remote_catalog import RemoteCatalogError, fetch_catalog
from identity.peer_client import PeerClient
from identity.trustlist import MemberView, list_members
from runtime.logging import get_logger

PAGE_SIZE = 500  # the most a Tessera provider serves per page
MAX_PAGES = 200
MAX_DATASETS = 10_000
CONCURRENCY = 4
FIRST_CRAWL_DELAY_SECONDS = 3.0
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")

log = get_logger("tessera.crawler")


class CrawlError(Exception):
    """The member's catalog could not be fetched or read; ``not_found``: it has none (HTTP 404)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class CrawlResult:
    participant_did: str
    status: Literal["ok", "failed", "skipped"]
    dataset_count: int  # cached now (after a failure: still cached from before)
    error: str | None = None  # why it failed, or what was left out of a successful crawl


@dataclass
class FetchedCatalog:
    datasets: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0
    notes: list[str] = field(default_factory=list)


def utcnow() -> datetime:
    return datetime.now(UTC)


def next_link(header: str | None) -> str | None:
    """The target of the ``rel="next"`` link in a ``Link`` header, if any."""
    for match in _LINK.finditer(header or ""):
        for parameter in match.group(2).split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return match.group(1).strip()
    return None


def catalog_page_of(member: MemberView, url: str) -> tuple[int, int] | None:
    """(offset, limit) of ``url`` when it is the member's own catalog endpoint; None otherwise."""
    base, target = urlsplit(member.dsp_url), urlsplit(url)
    if (
        target.scheme.lower() != base.scheme.lower()
        or target.netloc.lower() != base.netloc.lower()
        or target.path != base.path.rstrip("/") + "/catalog/request"
        or target.fragment
    ):
        return None
    query = parse_qs(target.query)
    try:
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(PAGE_SIZE)])[0])
    except ValueError:
        return None
    return offset, max(1, min(limit, PAGE_SIZE))


def _read_page(body: bytes, did: str, page: int) -> list[dict[str, Any]]:
    """The datasets of one catalog page; CrawlError when it is not a DSP catalog."""
    try:
        catalog = json.loads(body)
    except (ValueError, RecursionError):
        raise CrawlError(f"{did} sent a catalog page {page} that is not JSON") from None
    problems = schemas.errors("catalog-schema", catalog)
    if problems:
        raise CrawlError(
            f"{did} sent a catalog page {page} that is not a DSP catalog: {'; '.join(problems[:3])}"
        )
    datasets: list[dict[str, Any]] = catalog.get("dataset", [])
    return datasets


async def fetch_member_catalog(
    client: PeerClient, member: MemberView, *, page_size: int = PAGE_SIZE
) -> FetchedCatalog:
    """Every dataset of the member's catalog (at most MAX_DATASETS, from at most MAX_PAGES pages)."""
    fetched = FetchedCatalog()
    seen: set[str] = set()
    offset, limit = 0, page_size
    while True:
        url = f"{member.dsp_url}/catalog/request?offset={offset}&limit={limit}"
        try:
            response = await fetch_catalog(client, member, QuerySpec(offset=offset, limit=limit))
        except RemoteCatalogError as exc:
            raise CrawlError(_describe(exc), not_found=exc.remote_status == 404) from None
        fetched.pages += 1
        for dataset in await asyncio.to_thread(_read_page, response.body, member.did, fetched.pages):
            if len(fetched.datasets) >= MAX_DATASETS:
                fetched.notes.append(f"stopped after {MAX_DATASETS} datasets")
                return fetched
            dataset_id = dataset.get("@id")
            if isinstance(dataset_id, str) and dataset_id not in seen:
                seen.add(dataset_id)
                fetched.datasets.append(dataset)
        link = next_link(response.link)
        if link is None:
            return fetched
        if fetched.pages >= MAX_PAGES:
            fetched.notes.append(f"stopped after {MAX_PAGES} pages")
            return fetched
        target = catalog_page_of(member, urljoin(url, link))
        if target is None:
            fetched.notes.append(
                f"did not follow the next link {link[:200]!r}: it is not the catalog at {member.dsp_url}"
            )
            return fetched
        if target[0] <= offset:
            fetched.notes.append(f"did not follow the next link {link[:200]!r}: it does not move forward")
            return fetched
        offset, limit = target


def _describe(exc: RemoteCatalogError) -> str:
    if exc.remote_body is None:
        return str(exc)
    detail = exc.remote_body if isinstance(exc.remote_body, str) else json.dumps(exc.remote_body)
    return f"{exc}: {detail[:300]}"


def _cacheable(member: MemberView, raw: list[dict[str, Any]], at: datetime) -> Iterator[CachedDataset | str]:
    for dataset in raw:
        try:
            yield dataset_from_dsp(member.did, dataset, at)
        except DatasetError as exc:
            yield str(exc)


@dataclass(frozen=True)
class _Outcome:
    dataset_count: int
    note: str | None


async def _crawl(
    session: Session, client: PeerClient, member: MemberView, *, page_size: int = PAGE_SIZE
) -> _Outcome:
    started = utcnow()
    try:
        fetched = await fetch_member_catalog(client, member, page_size=page_size)
    except CrawlError as exc:
        await asyncio.to_thread(record_crawl_failure, session, member.did, str(exc), attempted_at=started)
        raise
    datasets: list[CachedDataset] = []
    skipped: list[str] = []
    for item in _cacheable(member, fetched.datasets, started):
        if isinstance(item, CachedDataset):
            datasets.append(item)
        else:
            skipped.append(item)
    notes = list(fetched.notes)
    if skipped:
        notes.append(f"skipped {len(skipped)} datasets ({skipped[0]})")
    note = "; ".join(notes) or None
    count = await asyncio.to_thread(
        replace_member_datasets, session, member.did, datasets, fetched_at=started, note=note
    )
    return _Outcome(count, note)


async def crawl_member(
    session: Session, client: PeerClient, member: MemberView, *, page_size: int = PAGE_SIZE
) -> int:
    """Replace the member's cached datasets with its catalog now; the number cached.

    On failure the previous cache stays, ``last_error`` says why, and CrawlError is raised.
    """
    return (await _crawl(session, client, member, page_size=page_size)).dataset_count


def _cached_count(session: Session, did: str) -> int:
    status = get_crawl_status(session, did)
    return status.dataset_count if status else 0


async def _crawl_one(
    engine: Engine, client: PeerClient, member: MemberView, page_size: int, limit: asyncio.Semaphore
) -> CrawlResult:
    async with limit:
        with Session(engine) as session:
            try:
                outcome = await _crawl(session, client, member, page_size=page_size)
                result = CrawlResult(member.did, "ok", outcome.dataset_count, outcome.note)
            except CrawlError as exc:
                status: Literal["failed", "skipped"] = "skipped" if exc.not_found else "failed"
                count = await asyncio.to_thread(_cached_count, session, member.did)
                result = CrawlResult(member.did, status, count, str(exc))
            except Exception as exc:  # a database failure: reported per member, the others go on
                log.exception("crawl failed", member=member.did)
                result = CrawlResult(member.did, "failed", 0, f"{type(exc).__name__}: {exc}"[:500])
                with contextlib.suppress(Exception):  # the database may be what failed
                    await asyncio.to_thread(
                        record_crawl_failure, session, member.did, result.error or "", attempted_at=utcnow()
                    )
    log.info("crawled", member=member.did, status=result.status, datasets=result.dataset_count)
    return result


async def crawl_all(
    engine: Engine, client: PeerClient, *, page_size: int = PAGE_SIZE
) -> dict[str, CrawlResult]:
    """Crawl every trust-list member (a few at a time); forget members that left the list.

    A member without a DSP catalog (HTTP 404, e.g. a consent service) is
    ``skipped``, its error recorded.
    """

    def members() -> list[MemberView]:
        with Session(engine) as session:
            found = list_members(session)
            forget_participants(session, {m.did for m in found})
            return found

    limit = asyncio.Semaphore(CONCURRENCY)
    results = await asyncio.gather(
        *(_crawl_one(engine, client, m, page_size, limit) for m in await asyncio.to_thread(members))
    )
    return {result.participant_did: result for result in results}


class FederatedCrawler:
    """Crawls on demand and every ``interval_seconds``; one crawl at a time per process."""

    def __init__(
        self,
        engine: Engine,
        client: PeerClient,
        interval_seconds: float,
        *,
        first_delay_seconds: float = FIRST_CRAWL_DELAY_SECONDS,
    ) -> None:
        self.engine = engine
        self.client = client
        self.interval_seconds = interval_seconds
        self.first_delay_seconds = min(first_delay_seconds, interval_seconds)
        self._lock = asyncio.Lock()

    async def crawl_now(self) -> dict[str, CrawlResult]:
        async with self._lock:
            return await crawl_all(self.engine, self.client)

    async def run(self) -> None:
        """Crawl periodically until cancelled; a failed round is logged and the next one comes."""
        await asyncio.sleep(self.first_delay_seconds)
        while True:
            try:
                await self.crawl_now()
            except Exception:
                log.exception("federated catalog crawl failed")
            await asyncio.sleep(self.interval_seconds)
