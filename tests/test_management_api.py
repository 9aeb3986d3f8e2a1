"""The EDC Management API v3, as EDC clients (the Tractus-X Python SDK, EDC samples) use it.

Every request goes over HTTP into the real app; the lifecycle and query tests
run on SQLite and on PostgreSQL, because the QuerySpec is compiled to SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import Session

from catalog.jsonld import DCAT_NS, DCT_NS, EDC_MANAGEMENT_CONTEXT_URL, EDC_NS, ODRL_CONTEXT_URL, ODRL_NS
from connector.settings import ConnectorSettings
from policies.definitions import get_policy_definition
from runtime.service import ServiceCore
from runtime.settings import load_settings
from tests.catalog_helpers import (
    ASSET_CONTEXT,
    ASSETS,
    CONTRACT_DEFINITIONS,
    EDC_RESPONSE_CONTEXT,
    POLICIES,
    api_key,
    asset_body,
    constraint,
    contract_definition_body,
    counting_server,
    create,
    criterion,
    edc_error,
    ids,
    management,
    now_millis,
    policy_body,
    query,
    row_counts,
    rule,
)
from tests.conftest import Participant

MakeConnector = Callable[..., Participant]
TITLE = DCT_NS + "title"
KEYWORD = DCAT_NS + "keyword"


# ---------------------------------------------------------------- create, read, replace, delete


def test_asset_lifecycle(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    before = now_millis()

    created = create(api, ASSETS, asset_body("bus-stops", {"dct:title": "Bus stops", "name": "stops"}))
    assert created["@type"] == "IdResponse"
    assert created["@id"] == "bus-stops"
    assert before <= created["createdAt"] <= now_millis(), "createdAt is epoch milliseconds"
    assert created["@context"] == EDC_RESPONSE_CONTEXT

    duplicate = api.post(ASSETS, json=asset_body("bus-stops", {"dct:title": "Someone else's"}))
    error = edc_error(duplicate, 409, "ObjectConflict", "bus-stops")
    assert (error["path"], error["invalidValue"]) == (None, None)

    got = api.get(f"{ASSETS}/bus-stops")
    assert got.status_code == 200
    asset = got.json()
    assert asset["@id"] == "bus-stops"
    assert asset["@type"] == "Asset"
    assert asset["@context"] == EDC_RESPONSE_CONTEXT
    # Bare keys for the EDC vocabulary, properties.id added as EDC does; the duplicate changed nothing.
    assert asset["properties"] == {"name": "stops", "id": "bus-stops", TITLE: "Bus stops"}
    assert asset["dataAddress"] == {
        "@type": "DataAddress",
        "type": "HttpData",
        "baseUrl": "https://data.example.org/bus-stops",
    }

    edc_error(api.get(f"{ASSETS}/no-such-asset"), 404, "ObjectNotFound", "no-such-asset")

    # PUT /v3/assets names the asset in the body (EDC's route); the whole asset is replaced.
    replaced = api.put(ASSETS, json=asset_body("bus-stops", {"dct:title": "Bus stops 2026"}))
    assert replaced.status_code == 204, replaced.text
    assert replaced.content == b""
    assert api.get(f"{ASSETS}/bus-stops").json()["properties"] == {"id": "bus-stops", TITLE: "Bus stops 2026"}
    # ... and the query index follows the replacement.
    assert ids(
        query(api, ASSETS, filterExpression=[criterion("dct:title", "=", "Bus stops 2026")]).json()
    ) == ["bus-stops"]
    assert query(api, ASSETS, filterExpression=[criterion("name", "=", "stops")]).json() == []

    edc_error(api.put(ASSETS, json=asset_body("no-such-asset")), 404, "ObjectNotFound", "no-such-asset")
    edc_error(api.put(f"{ASSETS}/other", json=asset_body("bus-stops")), 400, "InvalidRequest", "other")

    deleted = api.delete(f"{ASSETS}/bus-stops")
    assert deleted.status_code == 204
    edc_error(api.get(f"{ASSETS}/bus-stops"), 404, "ObjectNotFound", "bus-stops")
    edc_error(api.delete(f"{ASSETS}/bus-stops"), 404, "ObjectNotFound", "bus-stops")
    assert row_counts(city.core.engine)["asset_property"] == 0, "the index rows went with the asset"


def test_policy_definition_lifecycle(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    transport_only = rule(constraint("membership", "isAnyOf", ["transport-operator"]))

    created = create(api, POLICIES, policy_body("transport-only", [transport_only]))
    assert (created["@type"], created["@id"]) == ("IdResponse", "transport-only")
    assert isinstance(created["createdAt"], int)
    edc_error(api.post(POLICIES, json=policy_body("transport-only")), 409, "ObjectConflict", "transport-only")

    got = api.get(f"{POLICIES}/transport-only").json()
    assert got["@type"] == "PolicyDefinition"
    assert got["@context"] == EDC_RESPONSE_CONTEXT
    assert got["createdAt"] == created["createdAt"]
    policy = got["policy"]
    assert policy["@type"] == "odrl:Set"
    permission = policy["odrl:permission"]
    assert permission["odrl:action"] == {"@id": "odrl:use"}
    assert permission["odrl:constraint"]["odrl:operator"] == {"@id": "odrl:isAnyOf"}
    assert permission["odrl:constraint"]["odrl:rightOperand"] == "transport-operator"
    edc_error(api.get(f"{POLICIES}/nope"), 404, "ObjectNotFound", "nope")

    # EDC's PUT names the id in the path only; the change is visible.
    changed = policy_body("transport-only", [rule(constraint("membership", "isAnyOf", ["utility"]))])
    del changed["@id"]
    assert api.put(f"{POLICIES}/transport-only", json=changed).status_code == 204
    new = api.get(f"{POLICIES}/transport-only").json()["policy"]
    assert new["odrl:permission"]["odrl:constraint"]["odrl:rightOperand"] == "utility"
    edc_error(api.put(f"{POLICIES}/nope", json=changed), 404, "ObjectNotFound", "nope")

    # A policy a contract definition uses cannot go; once the definition is gone, it can.
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("offer", "transport-only", "transport-only"))
    edc_error(api.delete(f"{POLICIES}/transport-only"), 409, "ObjectConflict", "transport-only", "offer")
    assert api.get(f"{POLICIES}/transport-only").status_code == 200
    assert api.delete(f"{CONTRACT_DEFINITIONS}/offer").status_code == 204
    assert api.delete(f"{POLICIES}/transport-only").status_code == 204
    edc_error(api.get(f"{POLICIES}/transport-only"), 404, "ObjectNotFound")
    edc_error(api.delete(f"{POLICIES}/transport-only"), 404, "ObjectNotFound")


def test_contract_definition_lifecycle(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, POLICIES, policy_body("strict", [rule(constraint("membership", "isAnyOf", ["x"]))]))
    body = contract_definition_body("buses", "open", "strict", [("dct:title", "like", "Bus%")])

    created = create(api, CONTRACT_DEFINITIONS, body)
    assert (created["@type"], created["@id"]) == ("IdResponse", "buses")
    edc_error(api.post(CONTRACT_DEFINITIONS, json=body), 409, "ObjectConflict", "buses")

    got = api.get(f"{CONTRACT_DEFINITIONS}/buses").json()
    assert got["@context"] == EDC_RESPONSE_CONTEXT
    assert (got["@type"], got["accessPolicyId"], got["contractPolicyId"]) == (
        "ContractDefinition",
        "open",
        "strict",
    )
    assert got["assetsSelector"] == {
        "@type": "Criterion",
        "operandLeft": "dct:title",
        "operator": "like",
        "operandRight": "Bus%",
    }
    assert got["createdAt"] == created["createdAt"]

    changed = contract_definition_body("buses", "strict", "open", [("id", "in", ["a", "b"])])
    assert api.put(CONTRACT_DEFINITIONS, json=changed).status_code == 204
    got = api.get(f"{CONTRACT_DEFINITIONS}/buses").json()
    assert (got["accessPolicyId"], got["contractPolicyId"]) == ("strict", "open")
    assert got["assetsSelector"]["operandRight"] == ["a", "b"]
    assert got["createdAt"] == created["createdAt"], "a replacement keeps the creation time"

    missing = contract_definition_body("nope", "open", "open")
    edc_error(api.put(CONTRACT_DEFINITIONS, json=missing), 404, "ObjectNotFound", "nope")
    edc_error(api.get(f"{CONTRACT_DEFINITIONS}/nope"), 404, "ObjectNotFound", "nope")
    assert api.delete(f"{CONTRACT_DEFINITIONS}/buses").status_code == 204
    edc_error(api.get(f"{CONTRACT_DEFINITIONS}/buses"), 404, "ObjectNotFound", "buses")
    edc_error(api.delete(f"{CONTRACT_DEFINITIONS}/buses"), 404, "ObjectNotFound", "buses")


def test_request_without_a_body_lists_everything(make_connector: MakeConnector, database_url: str) -> None:
    """The Tractus-X SDK's ``get_all`` posts to ``/request`` with no body at all."""
    city = make_connector("city", database_url=database_url)
    api = management(city)
    for name in ("a", "b"):
        create(api, ASSETS, asset_body(f"asset-{name}"))
        create(api, POLICIES, policy_body(f"policy-{name}"))
    for name in ("a", "b"):
        create(api, CONTRACT_DEFINITIONS, contract_definition_body(f"offer-{name}", "policy-a", "policy-b"))

    for path, kind in (
        (ASSETS, "Asset"),
        (POLICIES, "PolicyDefinition"),
        (CONTRACT_DEFINITIONS, "ContractDefinition"),
    ):
        response = api.post(f"{path}/request")
        assert response.status_code == 200, response.text
        items = response.json()
        assert isinstance(items, list)
        assert len(items) == 2, items
        for item in items:
            assert item["@type"] == kind
            assert item["@context"] == EDC_RESPONSE_CONTEXT, "each item carries its own @context"
        # An empty object is the same request.
        assert ids(api.post(f"{path}/request", json={}).json()) == ids(items)


# ---------------------------------------------------------------- QuerySpec


def _query_assets(api: Any) -> None:
    create(api, ASSETS, asset_body("bus", {"dct:title": "Bus stops", "dcat:keyword": ["bus", "transport"], "size": 12, "name": "stops"}))  # fmt: skip
    create(api, ASSETS, asset_body("tram", {"dct:title": "Tram lines", "dcat:keyword": ["tram", "transport"], "size": 3.5}))  # fmt: skip
    create(api, ASSETS, asset_body("bike", {"dct:title": "bike racks", "dcat:keyword": ["bike"], "size": 120}))  # fmt: skip
    create(api, ASSETS, asset_body("parking", {"dct:title": "Parking"}))


OPERATOR_CASES: list[tuple[list[dict[str, Any]], set[str]]] = [
    ([criterion("dct:title", "=", "Bus stops")], {"bus"}),
    ([criterion("dct:title", "!=", "Bus stops")], {"tram", "bike", "parking"}),
    ([criterion("dct:title", "in", ["Tram lines", "Parking", "Ferry"])], {"tram", "parking"}),
    ([criterion("dct:title", "not in", ["Tram lines"])], {"bus", "bike", "parking"}),
    ([criterion("dct:title", "like", "B%")], {"bus"}),  # case-sensitive on both databases
    ([criterion("dct:title", "like", "%lines")], {"tram"}),
    ([criterion("dct:title", "ilike", "b%")], {"bus", "bike"}),
    ([criterion("dct:title", "ilike", "%S%")], {"bus", "tram", "bike"}),
    ([criterion("dcat:keyword", "contains", "transport")], {"bus", "tram"}),
    ([criterion("dcat:keyword", "=", "bike")], {"bike"}),
    ([criterion("dcat:keyword", "in", ["tram", "bike"])], {"tram", "bike"}),
    ([criterion("dcat:keyword", "not in", ["transport"])], {"bike"}),  # an asset without keywords: no
    ([criterion("dcat:keyword", "!=", "bus")], {"tram", "bike"}),
    ([criterion("size", "<", 12)], {"tram"}),
    ([criterion("size", "<=", 12)], {"bus", "tram"}),
    ([criterion("size", ">", 12)], {"bike"}),  # numerically: 120 > 12, though "120" < "12" as text
    ([criterion("size", ">=", 3.5)], {"bus", "tram", "bike"}),
    ([criterion("size", "=", 120)], {"bike"}),
    ([criterion("size", "!=", 12)], {"tram", "bike"}),
    ([criterion("size", "in", [12, 120])], {"bus", "bike"}),
    ([criterion("name", "=", "stops")], {"bus"}),
    ([criterion("edc:name", "=", "stops")], {"bus"}),
    ([criterion(EDC_NS + "name", "=", "stops")], {"bus"}),
    ([criterion("properties.name", "=", "stops")], {"bus"}),
    ([criterion(f"'{TITLE}'", "=", "Parking")], {"parking"}),
    ([criterion(KEYWORD, "=", "tram")], {"tram"}),
    ([criterion("id", "in", ["bus", "bike", "ferry"])], {"bus", "bike"}),
    ([criterion("https://w3id.org/edc/v0.0.1/ns/id", "=", "tram")], {"tram"}),
    ([criterion("dcat:keyword", "contains", "transport"), criterion("size", ">", 5)], {"bus"}),
    ([criterion("nothing-has-this", "=", "x")], set()),
]


def test_query_spec_operators(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    _query_assets(api)
    wrong = []
    for criteria, expected in OPERATOR_CASES:
        response = query(api, ASSETS, filterExpression=criteria)
        assert response.status_code == 200, f"{criteria}: {response.text}"
        found = set(ids(response.json()))
        if found != expected:
            wrong.append(f"{criteria}: expected {sorted(expected)}, got {sorted(found)}")
    assert not wrong, "\n".join(wrong)


def test_query_spec_paging_and_sorting(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    names = [f"a{i:02}" for i in range(55)]
    for i, name in enumerate(names):
        # rank falls as i rises: 270, 265, ... 0 (as text "5" > "270": the sort must be numeric)
        create(api, ASSETS, asset_body(name, {"dct:title": f"Asset {i:02}", "rank": (54 - i) * 5}))
    create(api, ASSETS, asset_body("unranked", {"dct:title": "Unranked"}))

    everything = api.post(f"{ASSETS}/request")
    assert ids(everything.json()) == names[:50], "default limit 50, oldest first"
    assert ids(query(api, ASSETS, offset=50).json()) == [*names[50:], "unranked"]
    assert ids(query(api, ASSETS, offset=10, limit=3).json()) == names[10:13]
    assert ids(query(api, ASSETS, offset=100).json()) == []
    assert ids(query(api, ASSETS, sortOrder="DESC", limit=2).json()) == ["unranked", "a54"]

    by_rank = ids(query(api, ASSETS, sortField="rank", limit=100).json())
    assert by_rank == [*reversed(names), "unranked"], "numeric order; an asset without the field last"
    by_rank_desc = ids(query(api, ASSETS, sortField="rank", sortOrder="DESC", limit=100).json())
    assert by_rank_desc == [*names, "unranked"], "descending too, the asset without the field last"
    assert ids(query(api, ASSETS, sortField="dct:title", sortOrder="DESC", limit=3).json()) == [
        "unranked",
        "a54",
        "a53",
    ]
    assert ids(query(api, ASSETS, sortField="id", sortOrder="DESC", limit=2, offset=1).json()) == [
        "a54",
        "a53",
    ]

    # Policy and contract definitions page and sort by their own fields.
    for name in ("p3", "p1", "p2"):
        create(api, POLICIES, policy_body(name))
    assert ids(query(api, POLICIES, sortField="id").json()) == ["p1", "p2", "p3"]
    assert ids(query(api, POLICIES, sortField="id", sortOrder="DESC", limit=1, offset=1).json()) == ["p2"]
    assert ids(query(api, POLICIES, filterExpression=[criterion("id", "in", ["p1", "p3"])]).json()) == [
        "p3",
        "p1",
    ]
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("cd-x", "p1", "p2"))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("cd-y", "p3", "p2"))
    found = query(api, CONTRACT_DEFINITIONS, filterExpression=[criterion("accessPolicyId", "=", "p3")])
    assert ids(found.json()) == ["cd-y"]


BAD_QUERIES = [
    (ASSETS, {"filterExpression": [criterion("name", "~", "x")]}, "'~'", "filterExpression/0/operator"),
    (ASSETS, {"filterExpression": [criterion("name", "between", [1, 2])]}, "'between'", None),
    (ASSETS, {"sortOrder": "UP"}, "sortOrder", "sortOrder"),
    (ASSETS, {"limit": 0}, "limit", "limit"),
    (ASSETS, {"limit": "many"}, "limit", "limit"),
    (ASSETS, {"offset": -1}, "offset", "offset"),
    (ASSETS, {"filterExpression": [criterion("properties.a.b", "=", "x")]}, "properties.a.b", "operandLeft"),
    (ASSETS, {"filterExpression": [criterion("'http://x.org/unclosed", "=", "x")]}, "unclosed", None),
    (ASSETS, {"filterExpression": [criterion("name", "=", None)]}, "operandRight", None),
    (ASSETS, {"filterExpression": [criterion("name", "=", ["a", "b"])]}, "one operandRight", None),
    (ASSETS, {"sortField": "a b"}, "a b", None),
    (POLICIES, {"filterExpression": [criterion("policy.permission", "=", "x")]}, "policy.permission", None),
    (POLICIES, {"sortField": "title"}, "title", "sortField"),
    (CONTRACT_DEFINITIONS, {"filterExpression": [criterion("assetId", "=", "x")]}, "assetId", None),
    (CONTRACT_DEFINITIONS, {"sortField": "dct:title"}, "dct:title", "sortField"),
]


@pytest.mark.parametrize(("path", "spec", "named", "error_path"), BAD_QUERIES)
def test_bad_query_specs_are_refused_naming_the_problem(
    make_connector: MakeConnector, path: str, spec: dict[str, Any], named: str, error_path: str | None
) -> None:
    api = management(make_connector("city"))
    error = edc_error(query(api, path, **spec), 400, "InvalidRequest", named)
    if error_path is not None:
        assert error["path"] == error_path


# ---------------------------------------------------------------- the input forms EDC accepts


ADDRESS = {"type": "HttpData", "baseUrl": "https://data.example.org/stops"}
ASSET_FORMS: dict[str, dict[str, Any]] = {
    "object context without @vocab gets EDC's": {
        "@context": {"dct": DCT_NS, "dcat": DCAT_NS},
        "properties": {"name": "Stops", "dct:title": "Bus stops", "dcat:keyword": ["bus", "stops"]},
        "dataAddress": ADDRESS,
    },
    "no context at all": {
        "properties": {"name": "Stops", TITLE: "Bus stops", KEYWORD: ["bus", "stops"]},
        "dataAddress": ADDRESS,
    },
    "prefixed keys": {
        "@context": {"edc": EDC_NS, "dct": DCT_NS, "dcat": DCAT_NS},
        "@type": "edc:Asset",
        "edc:properties": {"edc:name": "Stops", "dct:title": "Bus stops", "dcat:keyword": ["bus", "stops"]},
        "edc:dataAddress": {"@type": "edc:DataAddress", "edc:type": "HttpData", "edc:baseUrl": ADDRESS["baseUrl"]},
    },
    "fully expanded IRIs": {
        "@type": EDC_NS + "Asset",
        EDC_NS + "properties": {EDC_NS + "name": "Stops", TITLE: "Bus stops", KEYWORD: ["bus", "stops"]},
        EDC_NS + "dataAddress": {EDC_NS + "type": "HttpData", EDC_NS + "baseUrl": ADDRESS["baseUrl"]},
    },
    "the management context URL": {
        "@context": [EDC_MANAGEMENT_CONTEXT_URL],
        "@type": "Asset",
        "properties": {"name": "Stops", "dct:title": "Bus stops", "dcat:keyword": ["bus", "stops"]},
        "dataAddress": {"@type": "DataAddress", **ADDRESS},
    },
    "null members are absent": {
        "@context": ASSET_CONTEXT,
        "properties": {"name": "Stops", "dct:title": "Bus stops", "dcat:keyword": ["bus", "stops"], "description": None},
        "privateProperties": None,
        "dataAddress": {**ADDRESS, "proxyPath": None},
    },
}  # fmt: skip


def test_asset_input_forms_are_stored_alike(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    api = management(city)
    stored = {}
    for index, (form, body) in enumerate(ASSET_FORMS.items()):
        asset_id = f"form-{index}"
        response = api.post(ASSETS, json={**body, "@id": asset_id})
        assert response.status_code == 200, f"{form}: {response.text}"
        got = api.get(f"{ASSETS}/{asset_id}").json()
        del got["@id"], got["properties"]["id"]
        stored[form] = got
    reference = stored["object context without @vocab gets EDC's"]
    assert reference["properties"] == {"name": "Stops", TITLE: "Bus stops", KEYWORD: ["bus", "stops"]}
    different = {form: got for form, got in stored.items() if got != reference}
    assert not different, f"stored differently from {reference}: {different}"
    # The keyword index is the same too: every form is found by the same query.
    found = query(api, ASSETS, filterExpression=[criterion("dcat:keyword", "=", "stops")]).json()
    assert len(found) == len(ASSET_FORMS)


POLICY_FORMS: dict[str, dict[str, Any]] = {
    "management context (as the SDK sends)": policy_body(
        "p", [rule(constraint("membership", "isAnyOf", ["transport-operator", "utility"]))]
    ),
    "policy with the ODRL context": {
        "@context": {"@vocab": EDC_NS},
        "policy": {
            "@context": ODRL_CONTEXT_URL,
            "@type": "Set",
            "permission": [{"action": "use", "constraint": [constraint("membership", "isAnyOf", ["transport-operator", "utility"])]}],
        },
    },
    "odrl: prefixes with EDC's vocabulary": {
        "@context": {"@vocab": EDC_NS, "odrl": ODRL_NS},
        "@type": "PolicyDefinition",
        "policy": {
            "@type": "odrl:Set",
            "odrl:permission": {
                "odrl:action": {"@id": "odrl:use"},
                "odrl:constraint": {
                    "odrl:leftOperand": {"@id": "membership"},
                    "odrl:operator": {"@id": "odrl:isAnyOf"},
                    "odrl:rightOperand": ["transport-operator", "utility"],
                },
            },
        },
    },
    "fully expanded IRIs": {
        "@type": [EDC_NS + "PolicyDefinition"],
        EDC_NS + "policy": {
            "@type": ODRL_NS + "Set",
            ODRL_NS + "permission": {
                ODRL_NS + "action": {"@id": ODRL_NS + "use"},
                ODRL_NS + "constraint": {
                    ODRL_NS + "leftOperand": {"@id": "https://w3id.org/tessera/v1/ns/membership"},
                    ODRL_NS + "operator": {"@id": ODRL_NS + "isAnyOf"},
                    ODRL_NS + "rightOperand": ["transport-operator", "utility"],
                },
            },
            ODRL_NS + "prohibition": None,
        },
    },
}  # fmt: skip


def test_policy_input_forms_mean_the_same_policy(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    api = management(city)
    policies = {}
    for index, (form, body) in enumerate(POLICY_FORMS.items()):
        policy_id = f"form-{index}"
        response = api.post(POLICIES, json={**body, "@id": policy_id})
        assert response.status_code == 200, f"{form}: {response.text}"
        assert api.get(f"{POLICIES}/{policy_id}").status_code == 200
        with Session(city.core.engine) as session:
            record = get_policy_definition(session, policy_id)
        assert record is not None
        policies[form] = record.policy
    reference = policies["management context (as the SDK sends)"]
    assert len(reference.permissions) == 1
    assert reference.permissions[0].action == "use"
    assert reference.permissions[0].constraints[0].describe() == (
        "membership isAnyOf ['transport-operator', 'utility']"
    )
    different = {form: policy for form, policy in policies.items() if policy != reference}
    assert not different, f"parsed differently from {reference}: {different}"


def test_the_odrl_context_does_not_leak_between_requests(make_connector: MakeConnector) -> None:
    """The ODRL context imported by the management context's ``policy`` term, then named inside it,
    then used alone: each request reads the same vocabulary (the JSON-LD library caches contexts)."""
    api = management(make_connector("city"))
    nested = policy_body("nested", [rule(constraint("membership", "isAnyOf", ["a"]))])
    nested["policy"]["@context"] = ODRL_CONTEXT_URL
    for attempt in range(2):
        response = api.post(POLICIES, json={**nested, "@id": f"nested-{attempt}"})
        assert response.status_code == 200, response.text
    alone = {"@context": {"@vocab": EDC_NS}, "@id": "alone", "policy": {"@context": ODRL_CONTEXT_URL, "type": "Set", "uid": "urn:p", "permission": {"action": "use"}}}  # fmt: skip
    assert api.post(POLICIES, json=alone).status_code == 200, "'type' still means @type"
    assert api.get(f"{POLICIES}/alone").json()["policy"]["@type"] == "odrl:Set"


# ---------------------------------------------------------------- authentication


def test_api_key_is_required(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    anonymous = city.client()
    for method, path in (
        ("GET", f"{ASSETS}/x"),
        ("POST", f"{ASSETS}/request"),
        ("POST", POLICIES),
        ("PUT", CONTRACT_DEFINITIONS),
        ("DELETE", f"{CONTRACT_DEFINITIONS}/x"),
        ("POST", "/management/v3/catalog/request"),
    ):
        error = edc_error(anonymous.request(method, path), 401, "AuthenticationFailed")
        assert error["message"] == "x-api-key not found"
        wrong = anonymous.request(method, path, headers={"X-Api-Key": api_key(city) + "x"})
        edc_error(wrong, 401, "AuthenticationFailed")
    created = anonymous.post(ASSETS, json=asset_body("x"), headers={"x-api-key": api_key(city)})
    assert created.status_code == 200, "the header name is case-insensitive"
    assert row_counts(city.core.engine)["asset"] == 1


def test_api_key_from_the_environment_wins(
    make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    city = make_connector("city")
    file_key = api_key(city)
    assert city.client().get(f"{ASSETS}/x", headers={"X-Api-Key": file_key}).status_code == 404

    override = "an-operator-chosen-key-0123456789"
    monkeypatch.setenv("TESSERA_MANAGEMENT_API_KEY", override)
    reloaded = load_settings(ConnectorSettings, city.settings.data_dir)
    client = Participant(reloaded, ServiceCore.create(reloaded, engine=city.core.engine)).client()
    edc_error(client.get(f"{ASSETS}/x", headers={"X-Api-Key": file_key}), 401, "AuthenticationFailed")
    assert client.get(f"{ASSETS}/x", headers={"X-Api-Key": override}).status_code == 404


# ---------------------------------------------------------------- bad input: 4xx, a reason, no rows


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels):
        node = {"next": node}
    return node


def test_bad_input_is_refused_and_writes_nothing(make_connector: MakeConnector, database_url: str) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, ASSETS, asset_body("existing", {"dct:title": "Existing", "dcat:keyword": ["a"]}))
    create(api, CONTRACT_DEFINITIONS, contract_definition_body("offer", "open", "open"))
    before = row_counts(city.core.engine)
    assert all(before.values()), before

    with counting_server() as server:
        context_url = f"{server.url}/context.jsonld"
        cases: list[tuple[str, str, dict[str, Any], int, tuple[str, ...]]] = [
            ("malformed JSON", ASSETS, {"content": b'{"@id": "x", "properties": '}, 400, ("not valid JSON",)),
            ("a JSON array", ASSETS, {"json": [asset_body("in-array")]}, 400, ("JSON object",)),
            ("an empty body", ASSETS, {"content": b""}, 400, ("JSON body",)),
            ("NaN", ASSETS, {"content": b'{"@id": "x", "properties": {"n": NaN}}'}, 400, ("NaN",)),
            ("a remote context", ASSETS, {"json": {**asset_body("remote"), "@context": context_url}}, 400, (context_url, "never fetched")),
            ("a remote context in a list", POLICIES, {"json": {**policy_body("remote"), "@context": [EDC_MANAGEMENT_CONTEXT_URL, context_url]}}, 400, (context_url,)),
            ("a remote scoped context", POLICIES, {"json": {**policy_body("remote"), "policy": {"@context": context_url, "@type": "Set"}}}, 400, (context_url,)),
            ("a remote @import", ASSETS, {"json": {**asset_body("remote"), "@context": {"@version": 1.1, "@import": context_url}}}, 400, (context_url,)),
            ("over 1 MiB", ASSETS, {"json": asset_body("big", {"description": "x" * (1024 * 1024 + 1)})}, 413, ("larger than",)),
            ("100 levels deep", ASSETS, {"json": asset_body("deep", {"deep": _deep(100)})}, 400, ("nested deeper",)),
            ("a licence that is none", ASSETS, {"json": asset_body("l", {"dct:license": "not a licence!"})}, 400, ("dct:license",)),
            ("a media type without a slash", ASSETS, {"json": asset_body("m", {"dcat:mediaType": "csv"})}, 400, ("dcat:mediaType",)),
            ("time running backwards", ASSETS, {"json": asset_body("t", {"dct:temporal": "2026-12-01/2026-11-01"})}, 400, ("dct:temporal", "ends before it starts")),
            ("personal data without subject", ASSETS, {"json": asset_body("p", {"tessera:personal": True, "tessera:consentPurpose": "research"})}, 400, ("tessera:subjectField",)),
            ("personal data without purpose", ASSETS, {"json": asset_body("p", {"tessera:personal": True, "tessera:subjectField": "card_id"})}, 400, ("tessera:consentPurpose",)),
            ("personal data, prefix undefined", ASSETS, {"json": {**asset_body("p", {"tessera:personal": True}), "@context": {"@vocab": EDC_NS}}}, 400, ("tessera:personal", "not defined")),
            ("an unknown frequency", ASSETS, {"json": asset_body("f", {"dct:accrualPeriodicity": "sometimes"})}, 400, ("dct:accrualPeriodicity",)),
            ("60 keywords", ASSETS, {"json": asset_body("k", {"dcat:keyword": [f"k{i}" for i in range(60)]})}, 400, ("dcat:keyword", "50")),
            ("a NUL character", ASSETS, {"json": asset_body("n", {"dct:title": "bus\u0000stops"})}, 400, ("NUL",)),
            ("a number beyond a double", ASSETS, {"content": b'{"@id": "x", "properties": {"size": 1e400}, "dataAddress": {"type": "X"}}'}, 400, ("1e400", "out of range")),
            ("an integer beyond 64 bits", ASSETS, {"json": asset_body("i", {"size": 10**20})}, 400, ("out of range",)),
            ("no data address", ASSETS, {"json": {"@context": {}, "@id": "d", "properties": {}}}, 400, ("dataAddress",)),
            ("HttpData without a URL", ASSETS, {"json": {**asset_body("h"), "dataAddress": {"type": "HttpData", "baseUrl": "ftp://x"}}}, 400, ("baseUrl",)),
            ("an undefined edc: prefix", ASSETS, {"json": {"@context": {}, "@id": "e", "edc:properties": {}, "dataAddress": ADDRESS}}, 400, ("edc:properties",)),
            ("an unknown left operand", POLICIES, {"json": policy_body("u", [rule(constraint("shoeSize", "eq", "44"))])}, 400, ("shoeSize",)),
            ("an unknown operator", POLICIES, {"json": policy_body("u", [rule(constraint("membership", "isCloseTo", ["a"]))])}, 400, ("isCloseTo",)),
            ("a policy that is no Set", POLICIES, {"json": {**policy_body("u"), "policy": {"@type": "Agreement"}}}, 400, ("odrl:Set",)),
            ("a missing access policy", CONTRACT_DEFINITIONS, {"json": contract_definition_body("c", "ghost", "open")}, 400, ("accessPolicyId", "ghost")),
            ("a missing contract policy", CONTRACT_DEFINITIONS, {"json": contract_definition_body("c", "open", "phantom")}, 400, ("contractPolicyId", "phantom")),
            ("a selector with an unknown operator", CONTRACT_DEFINITIONS, {"json": contract_definition_body("c", "open", "open", [("id", "~=", "x")])}, 400, ("'~='",)),
            ("a selector with a malformed path", CONTRACT_DEFINITIONS, {"json": contract_definition_body("c", "open", "open", [("properties.a.b", "=", "x")])}, 400, ("properties.a.b",)),
        ]  # fmt: skip
        wrong = []
        for name, path, request, status, needles in cases:
            response = api.post(path, **request)
            text = response.text
            if response.status_code != status or not all(n in text for n in needles):
                wrong.append(
                    f"{name}: expected {status} naming {needles}, got {response.status_code} {text[:300]}"
                )
            elif not isinstance(response.json(), list) or response.json()[0]["type"] not in (
                "InvalidRequest",
                "ValidationFailure",
            ):
                wrong.append(f"{name}: not an EDC error body: {text[:300]}")
            if row_counts(city.core.engine) != before:
                wrong.append(f"{name}: rows changed: {before} -> {row_counts(city.core.engine)}")
        assert not wrong, "\n".join(wrong)
        assert server.hits == [], "no context was ever fetched"

    # A bad replacement leaves the asset as it was.
    bad = asset_body("existing", {"dct:title": "Changed", "dct:license": "not a licence!"})
    edc_error(api.put(ASSETS, json=bad), 400, "ValidationFailure", "dct:license")
    assert api.get(f"{ASSETS}/existing").json()["properties"][TITLE] == "Existing"
    bad_definition = contract_definition_body("offer", "ghost", "open")
    edc_error(api.put(CONTRACT_DEFINITIONS, json=bad_definition), 400, "ValidationFailure", "ghost")
    assert api.get(f"{CONTRACT_DEFINITIONS}/offer").json()["accessPolicyId"] == "open"
    assert row_counts(city.core.engine) == before


def test_what_an_agreement_names_cannot_be_deleted(make_connector: MakeConnector, database_url: str) -> None:
    from contracts.agreements import AgreementRecord, store_agreement
    from contracts.models import NegotiationRow

    city = make_connector("city", database_url=database_url)
    api = management(city)
    create(api, POLICIES, policy_body("open"))
    create(api, ASSETS, asset_body("buses"))
    create(
        api,
        CONTRACT_DEFINITIONS,
        contract_definition_body("offer-buses", "open", "open", [("id", "=", "buses")]),
    )
    agreement = {
        "@id": "urn:uuid:agreed",
        "@type": "Agreement",
        "target": "buses",
        "assigner": city.did,
        "assignee": "did:web:transit.example",
        "permission": [{"action": "use"}],
    }
    with Session(city.core.engine) as session:
        session.add(
            NegotiationRow(
                id="n1",
                role="provider",
                provider_pid="urn:p",
                consumer_pid="urn:c",
                counter_party_did="did:web:transit.example",
                counter_party_address="http://127.0.0.1:9/dsp/2025-1",
                state="FINALIZED",
                asset_id="buses",
                contract_definition_id="offer-buses",
                offer="{}",
                agreement_id="urn:uuid:agreed",
                created_at=now_millis(),
                updated_at=now_millis(),
            )
        )
        session.commit()
        store_agreement(
            session,
            AgreementRecord(
                "urn:uuid:agreed",
                "n1",
                city.did,
                "did:web:transit.example",
                "buses",
                agreement,
                now_millis(),
                None,
                None,
            ),
        )

    edc_error(api.delete(f"{ASSETS}/buses"), 409, "ObjectConflict", "urn:uuid:agreed")
    edc_error(api.delete(f"{CONTRACT_DEFINITIONS}/offer-buses"), 409, "ObjectConflict", "urn:uuid:agreed")
    assert api.get(f"{ASSETS}/buses").status_code == 200, "the asset is still there"
    assert api.get(f"{CONTRACT_DEFINITIONS}/offer-buses").status_code == 200
