"""``/management/v3/federatedcatalog``: search the members' catalogs as last crawled, crawl, status.

Tessera's own API beside EDC's (EDC's federated catalog is a separate
service with a QuerySpec interface); bodies are plain JSON, errors are EDC
error bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from catalog.federated import MAX_SEARCH_LIMIT, CachedDataset, crawl_status, search_federated
from connector.federated_crawler import CrawlResult, FederatedCrawler
from connector.management.auth import require_api_key
from connector.management.errors import ManagementApiError
from identity.trustlist import list_members
from runtime.dependencies import db_session
from runtime.requests import read_json

TEXT_FIELDS = ("text", "publisher", "theme", "license", "participant")
MAX_FILTER_LENGTH = 2048
MAX_OFFSET = 2**31 - 1
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class SearchRequest:
    text: str | None = None
    publisher: str | None = None
    theme: str | None = None
    license: str | None = None
    participant: str | None = None
    personal: bool | None = None
    offset: int = 0
    limit: int = DEFAULT_LIMIT


def _invalid(message: str, path: str, value: Any = None) -> ManagementApiError:
    return ManagementApiError(400, "InvalidRequest", message, path, value)


def _whole_number(body: dict[str, Any], name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise _invalid(f"{name} must be a whole number from {minimum} to {maximum}", name, value)
    return value


def search_request_from(body: Any) -> SearchRequest:
    """The search a request body asks for; ManagementApiError (400 InvalidRequest) says what is wrong."""
    if body is None:
        return SearchRequest()
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object", "")
    known = {*TEXT_FIELDS, "personal", "offset", "limit", "@context", "@type"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _invalid(
            f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known - {'@context', '@type'}))})",
            unknown[0],
        )
    texts: dict[str, str | None] = {}
    for name in TEXT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_FILTER_LENGTH):
            raise _invalid(f"{name} must be text of at most {MAX_FILTER_LENGTH} characters", name, value)
        texts[name] = value if value is None or value.strip() else None
    personal = body.get("personal")
    if personal is not None and not isinstance(personal, bool):
        raise _invalid("personal must be true or false", "personal", personal)
    return SearchRequest(
        **texts,
        personal=personal,
        offset=_whole_number(body, "offset", 0, 0, MAX_OFFSET),
        limit=_whole_number(body, "limit", DEFAULT_LIMIT, 1, MAX_SEARCH_LIMIT),
    )


def _instant(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def dataset_json(dataset: CachedDataset) -> dict[str, Any]:
    return {
        "participantId": dataset.participant_did,
        "datasetId": dataset.dataset_id,
        "title": dataset.title,
        "description": dataset.description,
        "keywords": list(dataset.keywords),
        "publisher": dataset.publisher,
        "themes": list(dataset.themes),
        "license": dataset.license,
        "personal": dataset.personal,
        "mediaType": dataset.media_type,
        "fetchedAt": _instant(dataset.fetched_at),
        "dataset": dataset.raw,
    }


def result_json(result: CrawlResult) -> dict[str, Any]:
    return {
        "participantId": result.participant_did,
        "status": result.status,
        "datasetCount": result.dataset_count,
        "error": result.error,
    }


def status_json(session: Session) -> list[dict[str, Any]]:
    """Every member of the trust list, with how the last crawl of its catalog went (if any)."""
    statuses = {s.participant_did: s for s in crawl_status(session)}
    rows = []
    for member in list_members(session):
        status = statuses.get(member.did)
        rows.append(
            {
                "participantId": member.did,
                "dspUrl": member.dsp_url,
                "lastAttempt": _instant(status.last_attempt) if status else None,
                "lastSuccess": _instant(status.last_success) if status else None,
                "lastError": status.last_error if status else None,
                "datasetCount": status.dataset_count if status else 0,
            }
        )
    return rows


def federated_catalog_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/federatedcatalog",
        tags=["federated catalog"],
        dependencies=[Depends(require_api_key)],
    )

    @router.post("/request")
    async def search(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        asked = search_request_from(await read_json(request, optional=True))
        page = await run_in_threadpool(
            search_federated,
            session,
            asked.text,
            publisher=asked.publisher,
            theme=asked.theme,
            license=asked.license,
            personal=asked.personal,
            participant=asked.participant,
            offset=asked.offset,
            limit=asked.limit,
        )
        return JSONResponse(
            {
                "items": [dataset_json(d) for d in page.items],
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
            }
        )

    @router.post("/crawl")
    async def crawl(request: Request) -> JSONResponse:
        crawler: FederatedCrawler = request.app.state.crawler
        results = await crawler.crawl_now()
        return JSONResponse(
            [result_json(r) for r in sorted(results.values(), key=lambda r: r.participant_did)]
        )

    @router.get("/status")
    def status(session: Session = Depends(db_session)) -> JSONResponse:
        return JSONResponse(status_json(session))

    return router
