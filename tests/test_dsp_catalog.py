"""The DSP 2025-1 catalog: the provider side in-process, the consumer side between real processes.

A provider (city) publishes through its Management API; members (transit,
utility) ask for its catalog with self-issued tokens, as another connector
would. Every answer is checked against the vendored DSP schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from catalog.jsonld import DCT_NS, DSPACE_CONTEXT_URL, EDC_NS
from connector.dsp import schemas
from connector.settings import ConnectorSettings
from contracts.offers import parse_offer_id
from identity.tokens import issue_token
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.settings import load_settings
from tests.catalog_helpers import (
    ASSETS,
    CATALOG_REQUEST,
    CONTRACT_DEFINITIONS,
    DSP_CATALOG,
    DSP_DATASETS,
    POLICIES,
    asset_body,
    bearer,
    constraint,
    contract_definition_body,
    counting_server,
    create,
    criterion,
    dataset_ids,
    edc_error,
    management,
    offer_errors,
    policy_body,
    rule,
    trust,
)
from tests.conftest import CliResult, Participant, free_port, private_key_of
from tests.helpers import public_jwk_of, run_parallel, serving

MakeConnector = Callable[..., Participant]
DSPACE = "https://w3id.org/dspace/2025/1/"


def _space(make_connector: MakeConnector, database_url: str | None = None) -> tuple[Participant, ...]:
    """city (the provider) trusting transit (a transport operator) and utility (a utility)."""
    city = make_connector("city", database_url=database_url)
    transit = make_connector("transit")
    utility = make_connector("utility")
    trust(city, transit, ["transport-operator"])
    trust(city, utility, ["utility"])
    return city, transit, utility


def _catalog(client: TestClient, sender: Participant, receiver: Participant, **kwargs: Any) -> httpx.Response:
    body = kwargs.pop("json", CATALOG_REQUEST)
    response: httpx.Response = client.post(DSP_CATALOG, json=body, headers=bearer(sender, receiver), **kwargs)
    return response


def _valid_catalog(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    catalog: dict[str, Any] = response.json()
    assert schemas.errors("catalog-schema", catalog) == []
    return catalog


def _catalog_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["@type"] == "CatalogError"
    assert schemas.errors("catalog-error-schema", body) == []
    reasons = " ".join(body["reason"])
    for needle in needles:
        assert needle in reasons, f"{reasons!r} does not name {needle!r}"
    return body


# ---------------------------------------------------------------- what a catalog holds


def test_catalog_is_valid_dsp_and_offers_name_their_definition(
    make_connector: MakeConnector, database_url: str
) -> None:
    city, transit, _utility = _space(make_connector, database_url)
    api = management(city)
    create(
        api,
        ASSETS,
        asset_body(
            "stops",
            {"dct:title": "Bus stops", "dcat:keyword": ["bus"], "dct:license": "CC-BY-4.0", "name": "stops"},
        ),
    )
    create(api, ASSETS, asset_body("timetable", {"dct:title": "Timetable", "dcat:mediaType": "text/csv"}))
    create(api, POLICIES, policy_body("open"))
    create(
        api,
        POLICIES,
        policy_body("transport-only", [rule(constraint("membership", "isAnyOf", ["transport-operator"]))]),
    )
    create(api, POLICIES, policy_body("research-only", [rule(constraint("purpose", "eq", "research"))]))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("public", "open", "research-only"))
    create(
        api,
        CONTRACT_DEFINITIONS,
        contract_definition_body("operators", "transport-only", "open", [("id", "=", "stops")]),
    )

    client = city.client()
    catalog = _valid_catalog(_catalog(client, transit, city))
    assert catalog["@context"] == [DSPACE_CONTEXT_URL]
    assert catalog["@type"] == "Catalog"
    assert catalog["participantId"] == city.did
    assert catalog["service"][0]["endpointURL"] == city.settings.dsp_url
    datasets = {d["@id"]: d for d in catalog["dataset"]}
    assert set(datasets) == {"stops", "timetable"}
    assert datasets["stops"]["dct:title"] == "Bus stops"
    assert datasets["stops"]["dcat:keyword"] == "bus"
    assert datasets["stops"]["dct:license"] == "CC-BY-4.0"
    assert datasets["timetable"]["dcat:mediaType"] == "text/csv"
    assert EDC_NS + "id" not in datasets["stops"], "the EDC bookkeeping property is not published"

    offered: dict[str, set[tuple[str, str]]] = {}
    for dataset_id, dataset in datasets.items():
        assert schemas.errors("dataset-schema", {"@context": [DSPACE_CONTEXT_URL], **dataset}) == []
        for offer in dataset["hasPolicy"]:
            assert offer_errors(offer) == [], offer
            assert "target" not in offer, "catalog offers carry no target"
            assert offer["assigner"] == city.did
            parsed = parse_offer_id(offer["@id"])
            assert parsed is not None, offer["@id"]
            assert parsed.asset_id == dataset_id
            offered.setdefault(dataset_id, set()).add(
                (parsed.contract_definition_id, json.dumps(offer["permission"]))
            )
    research = json.dumps(
        [
            {
                "action": "use",
                "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}],
            }
        ]
    )
    anything = json.dumps([{"action": "use"}])
    assert offered == {
        "stops": {("public", research), ("operators", anything)},
        "timetable": {("public", research)},
    }, "one offer per admitting definition, carrying its contract policy"

    single = client.get(f"{DSP_DATASETS}/stops", headers=bearer(transit, city))
    assert single.status_code == 200, single.text
    assert schemas.errors("dataset-schema", single.json()) == []
    assert single.json()["hasPolicy"] == datasets["stops"]["hasPolicy"]


def test_visibility_follows_definitions_and_access_policies(
    make_connector: MakeConnector, database_url: str
) -> None:
    city, transit, utility = _space(make_connector, database_url)
    api = management(city)
    access = {
        "for-transport": [rule(constraint("membership", "isAnyOf", ["transport-operator", "rail"]))],
        "not-for-utility": [rule(constraint("membership", "isNoneOf", ["utility"]))],
        "for-utility-did": [rule(constraint("participantId", "eq", utility.did))],
        "not-for-transit-did": [rule(constraint("participantId", "neq", transit.did))],
    }
    create(api, POLICIES, policy_body("open"))
    for name, permissions in access.items():
        create(api, POLICIES, policy_body(name, permissions))
    create(
        api,
        POLICIES,
        policy_body(
            "prohibited-for-transit",
            [rule()],
            [rule(constraint("participantId", "eq", transit.did))],
            conflict="prohibit",  # without a strategy these clashing rules are refused at upload
        ),
    )
    for name in [*access, "prohibited-for-transit", "unoffered"]:
        create(api, ASSETS, asset_body(name, {"dct:title": name}))
    for name in [*access, "prohibited-for-transit"]:
        create(
            api,
            CONTRACT_DEFINITIONS,
            contract_definition_body(f"cd-{name}", name, "open", [("id", "=", name)]),
        )
    # "shared" is offered twice: each requester sees the offer its access policy admits.
    create(api, ASSETS, asset_body("shared", {"dct:title": "shared"}))
    create(
        api,
        CONTRACT_DEFINITIONS,
        contract_definition_body("cd-shared-transport", "for-transport", "open", [("id", "=", "shared")]),
    )
    create(
        api,
        CONTRACT_DEFINITIONS,
        contract_definition_body("cd-shared-utility", "for-utility-did", "open", [("id", "=", "shared")]),
    )

    client = city.client()
    expected = [
        (transit, {"for-transport", "not-for-utility", "shared"}, "cd-shared-transport"),
        (
            utility,
            {"for-utility-did", "not-for-transit-did", "prohibited-for-transit", "shared"},
            "cd-shared-utility",
        ),
    ]
    everything = {*access, "prohibited-for-transit", "unoffered", "shared"}
    for requester, visible, shared_offer in expected:
        catalog = _valid_catalog(_catalog(client, requester, city))
        assert set(dataset_ids(catalog)) == visible, requester.settings.name
        shared = next(d for d in catalog["dataset"] if d["@id"] == "shared")
        assert [parse_offer_id(o["@id"]).contract_definition_id for o in shared["hasPolicy"]] == [  # type: ignore[union-attr]
            shared_offer
        ]
        for dataset_id in sorted(visible):
            response = client.get(f"{DSP_DATASETS}/{dataset_id}", headers=bearer(requester, city))
            assert response.status_code == 200, (requester.settings.name, dataset_id, response.text)
        # Hidden, unoffered and unknown datasets all look alike: nothing leaks.
        bodies = set()
        for dataset_id in [*sorted(everything - visible), "no-such-dataset"]:
            response = client.get(f"{DSP_DATASETS}/{dataset_id}", headers=bearer(requester, city))
            body = _catalog_error(response, 404)
            bodies.add(json.dumps(body).replace(dataset_id, "ID"))
        assert len(bodies) == 1, bodies


def test_catalog_pages_through_every_dataset_once(make_connector: MakeConnector, database_url: str) -> None:
    city, transit, _utility = _space(make_connector, database_url)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("all", "open", "open"))
    names = [f"dataset-{i:03}" for i in range(120)]
    for name in names:
        create(api, ASSETS, asset_body(name))

    client = city.client()
    seen: list[str] = []
    url = f"{DSP_CATALOG}?limit=50"
    pages = []
    while url:
        response = client.post(url, json=CATALOG_REQUEST, headers=bearer(transit, city))
        catalog = _valid_catalog(response)
        links = dict(
            (rel, target)
            for target, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers.get("link", ""))
        )
        pages.append((len(catalog.get("dataset", [])), sorted(links)))
        seen += dataset_ids(catalog)
        url = links.get("next", "")
        if url:
            assert url.startswith(city.settings.dsp_url + "/catalog/request?"), url
    assert pages == [(50, ["next"]), (50, ["next", "previous"]), (20, ["previous"])]
    assert sorted(seen) == names
    assert len(seen) == len(set(seen)), "no dataset twice"

    for bad in ("limit=0", "limit=many", "offset=-1", "limit=501"):
        _catalog_error(
            client.post(f"{DSP_CATALOG}?{bad}", json=CATALOG_REQUEST, headers=bearer(transit, city)),
            400,
            "limit",
        )


# ---------------------------------------------------------------- the request message


def test_filter_narrows_the_catalog(make_connector: MakeConnector) -> None:
    city, transit, _utility = _space(make_connector)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("all", "open", "open"))
    for name, title, keywords in (
        ("bus", "Bus stops", ["bus"]),
        ("tram", "Tram lines", ["tram"]),
        ("bike", "Bike racks", ["bike", "bus"]),
    ):
        create(api, ASSETS, asset_body(name, {"dct:title": title, "dcat:keyword": keywords}))
    client = city.client()

    def visible(*criteria: dict[str, Any]) -> set[str]:
        message = {**CATALOG_REQUEST, "filter": list(criteria)}
        return set(dataset_ids(_valid_catalog(_catalog(client, transit, city, json=message))))

    assert visible() == {"bus", "tram", "bike"}
    assert visible(criterion("dct:title", "=", "Tram lines")) == {"tram"}
    assert visible(criterion("dcat:keyword", "contains", "bus")) == {"bus", "bike"}
    assert visible(criterion("dcat:keyword", "contains", "bus"), criterion("id", "!=", "bus")) == {"bike"}
    assert visible(criterion(DCT_NS + "title", "like", "%s")) == {"bus", "tram", "bike"}
    assert visible(criterion("dct:title", "=", "Ferry")) == set()

    for bad, named in (
        (criterion("dct:title", "~", "x"), "'~'"),
        (criterion("dct:title", "in", []), "operandRight"),
        (criterion("properties.a.b", "=", "x"), "properties.a.b"),
        ({"operandLeft": "dct:title"}, "operator"),
    ):
        message = {**CATALOG_REQUEST, "filter": [bad]}
        _catalog_error(_catalog(client, transit, city, json=message), 400, "filter 0", named)
    _catalog_error(_catalog(client, transit, city, json={**CATALOG_REQUEST, "filter": "all"}), 400, "filter")
    _catalog_error(
        _catalog(client, transit, city, json={**CATALOG_REQUEST, "@type": "DatasetRequestMessage"}),
        400,
        "CatalogRequestMessage",
    )
    _catalog_error(client.post(DSP_CATALOG, content=b"{not json", headers=bearer(transit, city)), 400, "JSON")


def test_refused_requests_are_catalog_errors_with_a_challenge(make_connector: MakeConnector) -> None:
    city, transit, utility = _space(make_connector)
    stranger = make_connector("stranger")  # not on city's trust list
    client = city.client()
    other_audience = "Bearer " + issue_token(private_key_of(transit), transit.did, utility.did)
    attempts = {
        "no token": {},
        "not a bearer token": {"Authorization": "Basic dHJhbnNpdDpzZWNyZXQ="},
        "a token for another audience": {"Authorization": other_audience},
        "a stranger's token": bearer(stranger, city),
    }
    for name, headers in attempts.items():
        for response in (
            client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=headers),
            client.get(f"{DSP_DATASETS}/anything", headers=headers),
        ):
            assert response.status_code == 401, (name, response.text)
            body = response.json()
            assert body["@type"] == "CatalogError", name
            assert schemas.errors("catalog-error-schema", body) == [], (name, body)
            assert response.headers["www-authenticate"].startswith("Bearer "), name
    # A token is good once: the replay is refused the same way.
    headers = bearer(transit, city)
    assert client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=headers).status_code == 200
    replay = client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=headers)
    assert replay.status_code == 401
    assert replay.json()["@type"] == "CatalogError"


def test_json_ld_forms_of_the_request(make_connector: MakeConnector) -> None:
    city, transit, _utility = _space(make_connector)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("all", "open", "open"))
    create(api, ASSETS, asset_body("stops", {"dct:title": "Bus stops"}))
    client = city.client()
    plain = _valid_catalog(_catalog(client, transit, city))
    assert dataset_ids(plain) == ["stops"]

    equivalent = {
        "full IRIs": {"@type": DSPACE + "CatalogRequestMessage", DSPACE + "filter": []},
        "expanded": [{"@type": [DSPACE + "CatalogRequestMessage"]}],
        "a prefix of the dspace namespace": {"@context": {"ds": DSPACE}, "@type": "ds:CatalogRequestMessage"},
        "EDC's context beside DSP's": {
            **CATALOG_REQUEST,
            "@context": [DSPACE_CONTEXT_URL, "https://w3id.org/edc/dspace/v0.0.1"],
        },
    }
    for form, message in equivalent.items():
        response = _catalog(client, transit, city, json=message)
        if form == "expanded":  # a top-level array is JSON-LD, but DSP messages are objects
            _catalog_error(response, 400, "object")
            continue
        catalog = _valid_catalog(response)
        assert catalog == plain, form

    with counting_server() as server:
        remote = f"{server.url}/context.jsonld"
        for message in (
            {**CATALOG_REQUEST, "@context": [remote]},
            {**CATALOG_REQUEST, "@context": [DSPACE_CONTEXT_URL, remote]},
            {**CATALOG_REQUEST, "@context": {"@import": remote}},
        ):
            _catalog_error(_catalog(client, transit, city, json=message), 400, remote, "never fetched")
        assert server.hits == [], "a context is never fetched"


# ---------------------------------------------------------------- the consumer side, real processes


def _settings(data_dir: Path) -> ConnectorSettings:
    return load_settings(ConnectorSettings, data_dir)


def _add_member(data_dir: Path, member: ConnectorSettings, *memberships: str) -> tuple[str, ...]:
    """The arguments of ``tessera dataspace add`` putting ``member`` on the list in ``data_dir``."""
    key = member.data_dir / "keys" / "public-key.jwk"
    args = ["dataspace", "add", "--dir", str(data_dir), "--did", member.did, "--url", member.dsp_url]
    args += ["--key", str(key)]
    for membership in memberships:
        args += ["--membership", membership]
    return tuple(args)


@pytest.mark.slow
def test_management_catalog_request_between_real_connectors(
    tmp_path: Path, tessera_cli: Callable[..., CliResult]
) -> None:
    city_dir, transit_dir = tmp_path / "city", tmp_path / "transit"
    city_port, transit_port, ghost_port = free_port(), free_port(), free_port()
    inits = [
        (("init", "--dir", str(city_dir), "--name", "city", "--port", str(city_port)), None),
        (("init", "--dir", str(transit_dir), "--name", "transit", "--port", str(transit_port)), None),
    ]
    assert [r.code for r in run_parallel(tessera_cli, inits)] == [0, 0]
    city, transit = _settings(city_dir), _settings(transit_dir)
    adds = [
        (_add_member(city_dir, transit, "transport-operator"), None),
        (_add_member(transit_dir, city), None),
    ]
    results = run_parallel(tessera_cli, adds)
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    # A member nobody answers for (setup, in-process: its key does not matter).
    ghost_did = f"did:web:127.0.0.1%3A{ghost_port}"
    engine = make_engine(transit.resolved_database_url)
    with Session(engine) as session:
        add_member(session, ghost_did, f"http://127.0.0.1:{ghost_port}/dsp/2025-1", public_jwk_of(city_dir))
    engine.dispose()

    with ExitStack() as stack:
        # Both connectors start at once; each is terminated when the block ends, whatever happens.
        with ThreadPoolExecutor(max_workers=2) as pool:
            started = [
                pool.submit(stack.enter_context, serving(city_dir, city_port)),
                pool.submit(stack.enter_context, serving(transit_dir, transit_port)),
            ]
        city_process, transit_process = (future.result() for future in started)
        with httpx.Client(
            base_url=city_process.base_url,
            headers={"X-Api-Key": (city_dir / "management-api-key").read_text().strip()},
        ) as city_api:
            operators = policy_body(
                "operators", [rule(constraint("membership", "isAnyOf", ["transport-operator"]))]
            )
            for path, body in (
                (POLICIES, policy_body("open")),
                (POLICIES, operators),
                (ASSETS, asset_body("stops", {"dct:title": "stops"})),
                (ASSETS, asset_body("timetable", {"dct:title": "timetable"})),
                (CONTRACT_DEFINITIONS, contract_definition_body("operators", "operators", "open")),
            ):
                assert city_api.post(path, json=body).status_code == 200
        _consumer_checks(transit_process.base_url, transit_dir, city, ghost_did)


def _consumer_checks(base_url: str, transit_dir: Path, city: ConnectorSettings, ghost_did: str) -> None:
    key = (transit_dir / "management-api-key").read_text().strip()
    api = httpx.Client(base_url=base_url, headers={"X-Api-Key": key}, timeout=20)

    def request(path: str, counter_party: str, address: str | None, **members: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "@context": {"@vocab": EDC_NS},
            "@type": "CatalogRequest",
            "counterPartyId": counter_party,
            "protocol": "dataspace-protocol-http:2025-1",
            **members,
        }
        if address is not None:
            body["counterPartyAddress"] = address
        return api.post(path, json=body)

    with api:
        catalog = request("/management/v3/catalog/request", city.did, city.dsp_url)
        assert catalog.status_code == 200, catalog.text
        assert schemas.errors("catalog-schema", catalog.json()) == []
        assert catalog.json()["participantId"] == city.did
        assert sorted(dataset_ids(catalog.json())) == ["stops", "timetable"]

        spec = {"querySpec": {"filterExpression": [criterion("dct:title", "=", "stops")], "limit": 1}}
        narrowed = request("/management/v3/catalog/request", city.did, None, **spec)
        assert narrowed.status_code == 200, narrowed.text
        assert dataset_ids(narrowed.json()) == ["stops"]

        dataset = request(
            "/management/v3/catalog/dataset/request", city.did, city.dsp_url, **{"@id": "stops"}
        )
        assert dataset.status_code == 200, dataset.text
        assert schemas.errors("dataset-schema", dataset.json()) == []

        # An address other than the member's own is refused before anything is sent.
        with counting_server(body={"@type": "Catalog"}) as elsewhere:
            moved = request("/management/v3/catalog/request", city.did, f"{elsewhere.url}/dsp/2025-1")
            edc_error(moved, 400, "InvalidRequest", "counterPartyAddress", city.dsp_url)
            assert elsewhere.hits == []

        unknown = request("/management/v3/catalog/request", "did:web:nobody.example.org", None)
        edc_error(unknown, 400, "InvalidRequest", "did:web:nobody.example.org")

        down = request("/management/v3/catalog/request", ghost_did, None)
        edc_error(down, 502, "BadGateway", ghost_did)

        missing = request(
            "/management/v3/catalog/dataset/request", city.did, None, **{"@id": "no-such-dataset"}
        )
        error = edc_error(missing, 502, "BadGateway", "404", "CatalogError", "no-such-dataset")
        assert city.did in error["message"]
