"""What the marketplace pages show: the federated catalog, searched and paged, and one dataset.

``catalog.federated`` (the cache of the members' catalogs) is imported when a
page is asked for, not when the app is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from sqlmodel import Session

from connector.pages.render import path_segment
from connector.pages.words import as_list, dsp_offer_words

if TYPE_CHECKING:
    from catalog.federated import CachedDataset

PAGE_SIZE = 20
MAX_PAGE = 10_000
MAX_FIELD_LENGTH = 200


@dataclass(frozen=True)
class SearchForm:
    text: str = ""
    publisher: str = ""
    theme: str = ""
    license: str = ""
    personal: bool = False
    page: int = 1

    @classmethod
    def from_query(cls, query: dict[str, str]) -> SearchForm:
        def field(name: str) -> str:
            return query.get(name, "").strip()[:MAX_FIELD_LENGTH]

        page_text = query.get("page", "1")
        page = int(page_text) if page_text.isdigit() else 1
        return cls(
            text=field("q"),
            publisher=field("publisher"),
            theme=field("theme"),
            license=field("license"),
            personal=query.get("personal") == "1",
            page=min(max(page, 1), MAX_PAGE),
        )

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE

    def url(self, page: int) -> str:
        params: dict[str, str] = {
            "q": self.text,
            "publisher": self.publisher,
            "theme": self.theme,
            "license": self.license,
        }
        params = {k: v for k, v in params.items() if v}
        if self.personal:
            params["personal"] = "1"
        if page > 1:
            params["page"] = str(page)
        return "/ui/marketplace" + (f"?{urlencode(params)}" if params else "")


@dataclass(frozen=True)
class ResultPage:
    items: list[CachedDataset]
    total: int
    first: int
    last: int
    previous_url: str | None
    next_url: str | None
    page: int
    pages: int


def dataset_url(item: CachedDataset) -> str:
    return f"/ui/marketplace/{path_segment(item.participant_did)}/{path_segment(item.dataset_id)}"


def search(session: Session, form: SearchForm) -> ResultPage:
    from catalog.federated import search_federated

    found = search_federated(
        session,
        form.text or None,
        publisher=form.publisher or None,
        theme=form.theme or None,
        license=form.license or None,
        personal=True if form.personal else None,
        offset=form.offset,
        limit=PAGE_SIZE,
    )
    pages = max(1, -(-found.total // PAGE_SIZE))
    return ResultPage(
        items=list(found.items),
        total=found.total,
        first=found.offset + 1 if found.items else 0,
        last=found.offset + len(found.items),
        previous_url=form.url(form.page - 1) if form.page > 1 else None,
        next_url=form.url(form.page + 1) if found.offset + len(found.items) < found.total else None,
        page=form.page,
        pages=pages,
    )


@dataclass(frozen=True)
class OfferView:
    id: str
    lines: tuple[str, ...]


def offers_of(item: CachedDataset) -> tuple[OfferView, ...]:
    """The offers in the cached DSP dataset, each with its rules in words."""
    offers = []
    for offer in as_list(item.raw.get("hasPolicy")):
        if isinstance(offer, dict):
            offers.append(OfferView(str(offer.get("@id", "(no id)")), tuple(dsp_offer_words(offer))))
    return tuple(offers)


def formats_of(item: CachedDataset) -> tuple[str, ...]:
    formats = []
    for distribution in as_list(item.raw.get("distribution")):
        if isinstance(distribution, dict) and distribution.get("format"):
            value = distribution["format"]
            formats.append(str(value.get("@id", value) if isinstance(value, dict) else value))
    return tuple(formats)


def cached_dataset(session: Session, participant: str, dataset_id: str) -> CachedDataset | None:
    from catalog.federated import get_cached_dataset

    return get_cached_dataset(session, participant, dataset_id)
