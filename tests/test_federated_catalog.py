"""The federated catalog: crawling members' catalogs into a cache, and searching it.

Search runs on SQLite and PostgreSQL alike. Crawls run against in-process
connectors (reaching each other through a routing transport) and against a
fake member on a real socket that answers whatever the test scripts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from catalog.federated import (
    CachedDataset,
    crawl_status,
    dataset_from_dsp,
    forget_participants,
    get_cached_dataset,
    get_crawl_status,
    record_crawl_failure,
    replace_member_datasets,
    search_federated,
)
from connector import federated_crawler
from connector.app import create_app
from connector.federated_crawler import CrawlError, crawl_all, crawl_member, next_link
from identity.keys import public_jwk
from identity.peer_client import PeerClient
from identity.trustlist import add_member, get_member, remove_member
from runtime.database import make_engine
from runtime.migrate import upgrade
from tests.conftest import Participant
from tests.federated_helpers import (
    CC_BY,
    ENVI,
    TRAN,
    FakeMember,
    InProcessDataspace,
    Scripted,
    api_key,
    asset,
    contract_definition,
    dsp_catalog,
    dsp_dataset,
    fake_member,
    policy,
    publish,
    trust_each_other,
)

T = TypeVar("T")
A, B = "did:web:a.example.org", "did:web:b.example.org"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TRANSIT_OPEN = ["ridership", "stops", "timetable", "delays", "fares"]


# ---------------------------------------------------------------- search (SQLite and PostgreSQL)


def _dataset(did: str, dataset_id: str, title: str | None, **fields: Any) -> CachedDataset:
    raw: dict[str, Any] = {"@id": dataset_id, "@type": "Dataset", **fields}
    if title is not None:
        raw["dct:title"] = title
    return dataset_from_dsp(did, raw, NOW)


SEARCHABLE = {
    A: [
        _dataset(
            A,
            "bus-stops",
            "Bus stops",
            **{
                "dct:description": "Every stop of the city's bus network.",
                "dcat:keyword": ["transport", "Haltestelle"],
                "dct:publisher": "City of Tessera",
                "dcat:theme": {"@id": TRAN},
                "dct:license": CC_BY,
            },
        ),
        _dataset(
            A,
            "card-trips",
            "Card trips",
            **{
                "dct:description": "Trips of transit card holders.",
                "dcat:keyword": ["bus", "travel card"],
                "dct:publisher": "Transit Authority",
                "dcat:theme": [{"@id": TRAN}],
                "dct:license": "CC0-1.0",
                "https://w3id.org/tessera/v1/ns/personal": True,
            },
        ),
        _dataset(
            A,
            "air",
            "Air quality",
            **{
                "dct:description": "NO2 at 100% of stations",
                "dcat:keyword": "pollution",
                "dct:publisher": "City of Tessera",
                "dcat:theme": [ENVI],
            },
        ),
        _dataset(A, "untitled", None, **{"dct:description": "Straße counts", "dcat:keyword": ["bus_lane"]}),
    ],
    B: [
        _dataset(
            B,
            "bus-ridership",
            "bus ridership",
            **{"dct:publisher": "Transit Authority", "dcat:theme": TRAN, "dcat:keyword": ["Bus"]},
        ),
        _dataset(B, "zebra", "Zebra crossings", **{"dcat:theme": [TRAN, ENVI]}),
    ],
}


@pytest.fixture
def searchable(database_url: str) -> Iterator[Engine]:
    """A migrated database holding SEARCHABLE, as two crawls left it."""
    upgrade("connector", database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        for did, datasets in SEARCHABLE.items():
            replace_member_datasets(session, did, datasets, fetched_at=NOW)
    yield engine
    engine.dispose()


def _ids(engine: Engine, text: str | None = None, **filters: Any) -> list[str]:
    with Session(engine) as session:
        return [d.dataset_id for d in search_federated(session, text, limit=200, **filters).items]


def test_every_word_must_occur_in_title_description_or_keywords_whatever_the_case(
    searchable: Engine,
) -> None:
    # Ordered by title (case-insensitively), untitled last.
    assert _ids(searchable, "bus") == ["bus-ridership", "bus-stops", "card-trips", "untitled"]
    assert _ids(searchable, "BUS stops") == ["bus-stops"]
    assert _ids(searchable, "  network   transport ") == ["bus-stops"]  # description + keyword
    assert _ids(searchable, "haltestelle") == ["bus-stops"]
    assert _ids(searchable, "bus harbour") == []
    assert _ids(searchable, "STRASSE") == ["untitled"]  # Unicode case folding: ß is ss
    assert _ids(searchable, "straße") == ["untitled"]
    # LIKE's wildcards are plain characters here.
    assert _ids(searchable, "%") == ["air"]
    assert _ids(searchable, "_") == ["untitled"]
    assert _ids(searchable, "") == _ids(searchable, None) == _ids(searchable, "   ")
    assert len(_ids(searchable)) == 6


def test_filters_match_exactly_and_combine(searchable: Engine) -> None:
    assert _ids(searchable, publisher="City of Tessera") == ["air", "bus-stops"]
    assert _ids(searchable, publisher="city of tessera") == []
    assert _ids(searchable, theme=TRAN) == ["bus-ridership", "bus-stops", "card-trips", "zebra"]
    assert _ids(searchable, theme=ENVI) == ["air", "zebra"]
    assert _ids(searchable, theme="TRAN") == []  # a theme is matched whole, not as a substring
    assert _ids(searchable, theme=TRAN.upper()) == []
    assert _ids(searchable, license="CC0-1.0") == ["card-trips"]
    assert _ids(searchable, license=CC_BY) == ["bus-stops"]
    assert _ids(searchable, personal=True) == ["card-trips"]
    assert _ids(searchable, personal=False) == ["air", "bus-ridership", "bus-stops", "zebra", "untitled"]
    assert _ids(searchable, participant=B) == ["bus-ridership", "zebra"]
    assert _ids(searchable, "bus", personal=False, participant=A) == ["bus-stops", "untitled"]
    assert _ids(searchable, "trips", publisher="Transit Authority", theme=TRAN, personal=True) == [
        "card-trips"
    ]


def test_pages_count_every_match(searchable: Engine) -> None:
    everything = _ids(searchable)
    assert everything == ["air", "bus-ridership", "bus-stops", "card-trips", "zebra", "untitled"]
    with Session(searchable) as session:
        first = search_federated(session, limit=4)
        second = search_federated(session, offset=4, limit=4)
        beyond = search_federated(session, offset=10, limit=4)
        assert [d.dataset_id for d in first.items + second.items] == everything
        assert (first.total, second.total, beyond.total, beyond.items) == (6, 6, 6, [])
        assert (second.offset, second.limit) == (4, 4)
        assert search_federated(session, "bus", limit=1).total == 4
        for offset, limit in ((0, 0), (0, 201), (-1, 20)):
            with pytest.raises(ValueError, match="limit between 1 and 200"):
                search_federated(session, offset=offset, limit=limit)


def test_a_crawl_replaces_a_members_datasets_and_a_failure_keeps_them(searchable: Engine) -> None:
    later, failed_at = NOW + timedelta(hours=1), NOW + timedelta(hours=2)
    with Session(searchable) as session:
        kept = get_cached_dataset(session, A, "card-trips")
        assert kept is not None
        assert kept.keywords == ("bus", "travel card")
        assert kept.themes == (TRAN,)
        assert (kept.personal, kept.license, kept.publisher) == (True, "CC0-1.0", "Transit Authority")
        assert kept.raw["dct:description"] == "Trips of transit card holders."
        assert kept.fetched_at == NOW  # time-zone aware on both databases

        assert replace_member_datasets(session, A, [kept], fetched_at=later) == 1
        assert _ids(searchable, participant=A) == ["card-trips"]
        assert _ids(searchable, participant=B) == ["bus-ridership", "zebra"]  # untouched

        record_crawl_failure(session, A, "did:web:a answered HTTP 500", attempted_at=failed_at)
        assert _ids(searchable, participant=A) == ["card-trips"]
        status = get_crawl_status(session, A)
        assert status is not None
        assert (status.last_success, status.last_error, status.dataset_count) == (
            later,
            "did:web:a answered HTTP 500",
            1,
        )
        assert status.last_attempt == failed_at

        assert forget_participants(session, {B}) == [A]
        assert get_cached_dataset(session, A, "card-trips") is None
        assert [s.participant_did for s in crawl_status(session)] == [B]


def test_dcat_fields_are_read_from_prefixed_and_full_iri_forms() -> None:
    dataset = dataset_from_dsp(
        A,
        {
            "@id": "x",
            "http://purl.org/dc/terms/title": [{"@value": "Titel\x00 mit\n Zeilen", "@language": "de"}],
            "http://purl.org/dc/terms/description": {"@value": "Long\ntext"},
            "http://www.w3.org/ns/dcat#keyword": ["a", "a", {"@value": "b"}, None, 7, {"bad": "node"}],
            "dct:publisher": {"@type": "foaf:Organization", "foaf:name": "Org"},
            "https://w3id.org/tessera/v1/ns/personal": "true",
            "dcat:mediaType": "text/csv",
        },
        NOW,
    )
    assert dataset.title == "Titel mit Zeilen"
    assert dataset.description == "Long\ntext"
    assert dataset.keywords == ("a", "b", "7")
    assert (dataset.publisher, dataset.personal, dataset.media_type) == ("Org", True, "text/csv")
    assert (
        dataset_from_dsp(A, {"@id": "y", "https://w3id.org/tessera/v1/ns/personal": "no"}, NOW).personal
        is False
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://x/c?offset=5>; rel="next"', "https://x/c?offset=5"),
        ('<https://x/p>; rel="previous", <https://x/n>; rel=next', "https://x/n"),
        ('<https://x/n>; title="a"; rel="last next"', "https://x/n"),
        ('<https://x/p>; rel="previous"', None),
        (None, None),
    ],
)
def test_next_link(header: str | None, expected: str | None) -> None:
    assert next_link(header) == expected


# ---------------------------------------------------------------- crawling in-process connectors


def _run(participant: Participant, work: Callable[[PeerClient], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a fresh real-network peer client of ``participant`` (closed afterwards)."""

    async def run() -> T:
        client = PeerClient(participant.did, participant.core.key)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.fixture
def dataspace(make_connector: Callable[..., Participant]) -> InProcessDataspace:
    """city, transit and utility trust each other; transit shows card-trips to utility only."""
    members = {name: make_connector(name) for name in ("city", "transit", "utility")}
    trust_each_other(list(members.values()))
    transit, city = members["transit"], members["city"]
    with transit.client() as client:
        publish(
            client,
            api_key(transit),
            [
                ("policydefinitions", policy("open")),
                ("policydefinitions", policy("utility-only", members["utility"].did)),
                *[("assets", asset(a, a.title() + " data", keywords=("bus",))) for a in TRANSIT_OPEN],
                ("assets", asset("card-trips", "Card trips", personal=True)),
                ("contractdefinitions", contract_definition("public", "open", TRANSIT_OPEN)),
                ("contractdefinitions", contract_definition("restricted", "utility-only", ["card-trips"])),
            ],
        )
    with city.client() as client:
        publish(
            client,
            api_key(city),
            [
                ("policydefinitions", policy("open")),
                ("assets", asset("bike-counts", "Bike counts", publisher="City", themes=(ENVI,))),
                ("contractdefinitions", contract_definition("public", "open", ["bike-counts"])),
            ],
        )
    return InProcessDataspace(members)


def _crawl_all(space: InProcessDataspace, name: str, **options: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        client = space.peer_client(name)
        try:
            return await crawl_all(space.members[name].core.engine, client, **options)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _cached(participant: Participant, **filters: Any) -> list[tuple[str, str]]:
    with Session(participant.core.engine) as session:
        page = search_federated(session, limit=200, **filters)
    return sorted((d.participant_did, d.dataset_id) for d in page.items)


def test_a_crawl_caches_what_each_members_access_policies_show_us(dataspace: InProcessDataspace) -> None:
    city, transit, utility = (dataspace.members[n] for n in ("city", "transit", "utility"))

    # Page size 2: transit's five datasets come in three pages, along its Link headers.
    results = _crawl_all(dataspace, "city", page_size=2)
    assert {did: (r.status, r.dataset_count, r.error) for did, r in results.items()} == {
        transit.did: ("ok", 5, None),
        utility.did: ("ok", 0, None),
    }
    assert _cached(city) == sorted((transit.did, a) for a in TRANSIT_OPEN)

    results = _crawl_all(dataspace, "utility")
    assert (results[transit.did].dataset_count, results[city.did].dataset_count) == (6, 1)
    assert (transit.did, "card-trips") in _cached(utility)
    assert _cached(utility, personal=True) == [(transit.did, "card-trips")]
    assert _cached(utility, theme=ENVI) == [(city.did, "bike-counts")]

    with Session(utility.core.engine) as session:
        cached = get_cached_dataset(session, transit.did, "card-trips")
        assert cached is not None
        assert cached.raw["@type"] == "Dataset"
        assert [o["@type"] for o in cached.raw["hasPolicy"]] == ["Offer"]
        statuses = {s.participant_did: s for s in crawl_status(session)}
    assert statuses[transit.did].last_success is not None
    assert statuses[transit.did].dataset_count == 6


def test_a_member_that_is_down_keeps_its_previous_datasets(dataspace: InProcessDataspace) -> None:
    city, transit = dataspace.members["city"], dataspace.members["transit"]
    _crawl_all(dataspace, "city")
    with Session(city.core.engine) as session:
        before = get_crawl_status(session, transit.did)

    dataspace.take_down("transit")
    result = _crawl_all(dataspace, "city")[transit.did]
    assert result.status == "failed"
    assert "could not be reached" in (result.error or "")
    assert result.dataset_count == 5
    assert len(_cached(city, text="bus")) == 5
    with Session(city.core.engine) as session:
        after = get_crawl_status(session, transit.did)
    assert before is not None
    assert after is not None
    assert after.last_success == before.last_success
    assert "could not be reached" in (after.last_error or "")
    assert after.last_attempt > before.last_attempt


def test_a_member_that_left_the_trust_list_is_forgotten(dataspace: InProcessDataspace) -> None:
    city, transit = dataspace.members["city"], dataspace.members["transit"]
    _crawl_all(dataspace, "city")
    assert len(_cached(city)) == 5
    with Session(city.core.engine) as session:
        remove_member(session, transit.did)
    assert transit.did not in _crawl_all(dataspace, "city")
    assert _cached(city) == []
    with Session(city.core.engine) as session:
        assert get_crawl_status(session, transit.did) is None


def test_the_work_per_member_is_bounded(
    dataspace: InProcessDataspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    city, transit = dataspace.members["city"], dataspace.members["transit"]
    with Session(city.core.engine) as session:
        member = get_member(session, transit.did)
    assert member is not None

    def crawl(page_size: int) -> tuple[int, str | None]:
        async def run() -> tuple[int, str | None]:
            client = dataspace.peer_client("city")
            try:
                with Session(city.core.engine) as session:
                    count = await crawl_member(session, client, member, page_size=page_size)
                    status = get_crawl_status(session, transit.did)
                    return count, status.last_error if status else None
            finally:
                await client.aclose()

        return asyncio.run(run())

    monkeypatch.setattr(federated_crawler, "MAX_PAGES", 2)
    assert crawl(page_size=1) == (2, "stopped after 2 pages")
    monkeypatch.setattr(federated_crawler, "MAX_PAGES", 200)
    monkeypatch.setattr(federated_crawler, "MAX_DATASETS", 3)
    assert crawl(page_size=2) == (3, "stopped after 3 datasets")
    monkeypatch.setattr(federated_crawler, "MAX_DATASETS", 10_000)
    assert crawl(page_size=2) == (5, None)


# ---------------------------------------------------------------- the Management API


def _api(space: InProcessDataspace, name: str) -> tuple[TestClient, dict[str, str]]:
    client = TestClient(create_app(space.core_for(name)))
    return client, {"X-Api-Key": api_key(space.members[name])}


def test_management_api_crawls_searches_and_reports(dataspace: InProcessDataspace) -> None:
    client, headers = _api(dataspace, "city")
    transit, utility = dataspace.members["transit"], dataspace.members["utility"]

    status = client.get("/management/v3/federatedcatalog/status", headers=headers).json()
    assert {row["participantId"]: row["lastAttempt"] for row in status} == {
        transit.did: None,
        utility.did: None,
    }

    crawled = client.post("/management/v3/federatedcatalog/crawl", headers=headers)
    assert crawled.status_code == 200
    assert sorted(
        (r["participantId"], r["status"], r["datasetCount"], r["error"]) for r in crawled.json()
    ) == [(did, "ok", count, None) for did, count in sorted([(transit.did, 5), (utility.did, 0)])]

    found = client.post(
        "/management/v3/federatedcatalog/request",
        json={"text": "Ridership BUS", "theme": TRAN, "personal": False, "limit": 5},
        headers=headers,
    )
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["total"], body["offset"], body["limit"]) == (1, 0, 5)
    item = body["items"][0]
    assert {k: v for k, v in item.items() if k not in ("fetchedAt", "dataset")} == {
        "participantId": transit.did,
        "datasetId": "ridership",
        "title": "Ridership data",
        "description": None,
        "keywords": ["bus"],
        "publisher": "Transit Authority",
        "themes": [TRAN],
        "license": CC_BY,
        "personal": False,
        "mediaType": "text/csv",
    }
    assert datetime.fromisoformat(item["fetchedAt"]).tzinfo is not None
    assert item["dataset"]["@id"] == "ridership"
    assert item["dataset"]["hasPolicy"][0]["@type"] == "Offer"

    everything = client.post("/management/v3/federatedcatalog/request", headers=headers).json()
    assert (everything["total"], everything["limit"], len(everything["items"])) == (5, 20, 5)
    second = client.post(
        "/management/v3/federatedcatalog/request", json={"offset": 3, "limit": 2}, headers=headers
    )
    assert [i["datasetId"] for i in second.json()["items"]] == [
        i["datasetId"] for i in everything["items"][3:5]
    ]

    status = client.get("/management/v3/federatedcatalog/status", headers=headers).json()
    by_did = {row["participantId"]: row for row in status}
    assert by_did[transit.did]["datasetCount"] == 5
    assert by_did[transit.did]["lastSuccess"] is not None
    assert by_did[transit.did]["dspUrl"] == transit.settings.dsp_url


BAD_SEARCHES: list[tuple[Any, str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": 201}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"limit": True}, "limit"),
    ({"offset": -1}, "offset"),
    ({"offset": 1.5}, "offset"),
    ({"personal": "yes"}, "personal"),
    ({"text": 5}, "text"),
    ({"publisher": ["a"]}, "publisher"),
    ({"theme": {"@id": TRAN}}, "theme"),
    ({"participant": "x" * 3000}, "participant"),
    ({"publsher": "x"}, "publsher"),
    ([{"text": "x"}], ""),
]


def test_management_api_refuses_bad_search_requests(make_connector: Callable[..., Participant]) -> None:
    city = make_connector("city")
    client = city.client()
    for body, path in BAD_SEARCHES:
        response = client.post(
            "/management/v3/federatedcatalog/request", json=body, headers={"X-Api-Key": api_key(city)}
        )
        assert response.status_code == 400, body
        [error] = response.json()
        assert (error["type"], error["path"]) == ("InvalidRequest", path), body
    broken = client.post(
        "/management/v3/federatedcatalog/request", content=b"{", headers={"X-Api-Key": api_key(city)}
    )
    assert (broken.status_code, broken.json()[0]["type"]) == (400, "InvalidRequest")


def test_management_api_needs_the_api_key(make_connector: Callable[..., Participant]) -> None:
    client = make_connector("city").client()
    for method, path in [("POST", "request"), ("POST", "crawl"), ("GET", "status")]:
        response = client.request(
            method, f"/management/v3/federatedcatalog/{path}", headers={"X-Api-Key": "x"}
        )
        assert response.status_code == 401
        assert response.json()[0]["type"] == "AuthenticationFailed"


def test_the_connector_crawls_in_the_background_and_stops_cleanly(dataspace: InProcessDataspace) -> None:
    core = dataspace.core_for("city")
    settings = core.settings.model_copy(update={"catalog_crawl_interval_seconds": 1})
    transit = dataspace.members["transit"]
    headers = {"X-Api-Key": api_key(dataspace.members["city"])}
    started = time.monotonic()
    with TestClient(create_app(replace(core, settings=settings))) as client:
        while True:
            rows = client.get("/management/v3/federatedcatalog/status", headers=headers).json()
            if any(r["participantId"] == transit.did and r["lastSuccess"] for r in rows):
                break
            assert time.monotonic() - started < 15, rows
            time.sleep(0.1)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2  # the crawler task is cancelled, not awaited to its end
    assert len(_cached(dataspace.members["city"])) == 5


def test_no_background_crawl_when_the_interval_is_zero(dataspace: InProcessDataspace) -> None:
    core = dataspace.core_for("city")
    settings = core.settings.model_copy(update={"catalog_crawl_interval_seconds": 0})
    with TestClient(create_app(replace(core, settings=settings))):
        time.sleep(0.3)
    with Session(core.engine) as session:
        assert crawl_status(session) == []


# ---------------------------------------------------------------- members that misbehave


def _trust_fake(participant: Participant, member: FakeMember) -> None:
    with Session(participant.core.engine) as session:
        add_member(session, member.did, member.dsp_url, public_jwk(Ed25519PrivateKey.generate().public_key()))


def _crawl_fake(participant: Participant, member: FakeMember) -> int:
    async def work(client: PeerClient) -> int:
        with Session(participant.core.engine) as session:
            found = get_member(session, member.did)
            assert found is not None
            return await crawl_member(session, client, found, page_size=1)

    return _run(participant, work)


def _status_of(participant: Participant, did: str) -> tuple[int, str | None]:
    with Session(participant.core.engine) as session:
        status = get_crawl_status(session, did)
    assert status is not None
    return status.dataset_count, status.last_error


NEXT_LINKS = {  # name: (Link header of page 1, whether the crawler may follow it)
    "other-host": ('<{elsewhere}/dsp/2025-1/catalog/request?offset=1&limit=1>; rel="next"', False),
    "other-path": ('<{member}/other/catalog/request?offset=1&limit=1>; rel="next"', False),
    "dot-segments": ('<{member}/dsp/2025-1/catalog/request/../../../x?offset=1>; rel="next"', False),
    "other-scheme": ('<https://{member_host}/dsp/2025-1/catalog/request?offset=1>; rel="next"', False),
    "not-forward": ('<{member}/dsp/2025-1/catalog/request?offset=0&limit=1>; rel="next"', False),
    "relative": ('</dsp/2025-1/catalog/request?offset=1&limit=1>; rel="next"', True),
    "absolute": ('<{member}/dsp/2025-1/catalog/request?offset=1&limit=1>; rel="next"', True),
}


def test_a_next_link_is_only_followed_to_the_members_own_catalog(
    make_connector: Callable[..., Participant],
) -> None:
    city = make_connector("city")
    with fake_member() as member, fake_member() as elsewhere:
        _trust_fake(city, member)
        member.pages[1] = Scripted(200, dsp_catalog(member.did, [dsp_dataset("two", "Two")]))
        elsewhere.pages[1] = Scripted(200, dsp_catalog(member.did, [dsp_dataset("evil", "Evil")]))
        for name, (link, followed) in NEXT_LINKS.items():
            page_link = link.format(
                member=member.base_url, member_host=member.base_url[7:], elsewhere=elsewhere.base_url
            )
            member.pages[0] = Scripted(200, dsp_catalog(member.did, [dsp_dataset("one", "One")]), page_link)
            member.requests.clear()

            count = _crawl_fake(city, member)

            assert elsewhere.requests == [], name
            assert len(member.requests) == (2 if followed else 1), name
            assert count == (2 if followed else 1), name
            assert [d for _, d in _cached(city)] == (["one", "two"] if followed else ["one"]), name
            _, note = _status_of(city, member.did)
            if followed:
                assert note is None, name
            else:
                assert note is not None, name
                assert "did not follow the next link" in note, name


def test_a_bad_answer_or_a_member_gone_keeps_the_previous_cache(
    make_connector: Callable[..., Participant],
) -> None:
    city = make_connector("city")
    with fake_member() as member:
        _trust_fake(city, member)
        member.pages[0] = Scripted(
            200, dsp_catalog(member.did, [dsp_dataset("one", "One"), dsp_dataset("x" * 300, "Long")])
        )
        assert _crawl_fake(city, member) == 1  # the dataset with an over-long id is left out
        assert _status_of(city, member.did) == (
            1,
            f"skipped 1 datasets (dataset id {'x' * 40!r}… is longer than 256 characters)",
        )

        broken = dsp_catalog(member.did, [dsp_dataset("two", "Two")])
        del broken["participantId"]
        member.pages[0] = Scripted(200, broken)
        with pytest.raises(CrawlError, match="not a DSP catalog"):
            _crawl_fake(city, member)
        count, error = _status_of(city, member.did)
        assert count == 1
        assert error is not None
        assert "participantId" in error

        member.pages[0] = Scripted(200, ["not", "a", "catalog"])
        with pytest.raises(CrawlError, match="not a DSP catalog"):
            _crawl_fake(city, member)

        member.pages.clear()  # everything answers 404: not a connector
        [result] = _run(city, lambda client: crawl_all(city.core.engine, client)).values()
        assert (result.status, result.dataset_count) == ("skipped", 1)
        assert "HTTP 404" in (result.error or "")

    [result] = _run(city, lambda client: crawl_all(city.core.engine, client)).values()
    assert result.status == "failed"
    assert "could not be reached" in (result.error or "")
    assert _cached(city) == [(member.did, "one")]
