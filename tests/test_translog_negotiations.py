"""Negotiations leave evidence in both connectors' transfer logs; real connectors witness each other.

Two real connectors (``tessera serve``): an automatic negotiation logs the finalized
agreement with both signatures on both sides, a contract policy's refusal logs the refusal
with its reason on both sides, the provider's audit bundle verifies offline, and a witnessing
round over real HTTP leaves the consumer's cosignature on the provider's checkpoint.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from connector.translog.audit import verify_bundle
from tests.catalog_helpers import constraint, policy_body, rule
from tests.negotiation_helpers import (
    Node,
    catalog_offer,
    connector_pair,
    contract_request,
    counterpart,
    negotiation,
    publish,
    run_cli,
    running,
    start_negotiation,
    wait_for,
    wait_until,
)

LOG = "/management/v3/transferlog"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Node, Node, httpx.Client, httpx.Client]]:
    city, transit = connector_pair(tmp_path_factory.mktemp("translog"), run_cli)
    with ExitStack() as stack:
        with running(stack, city, transit):
            pass
        yield city, transit, stack.enter_context(city.api()), stack.enter_context(transit.api())


def _entries(api: httpx.Client) -> list[dict[str, Any]]:
    size = int(api.get(f"{LOG}/checkpoint").text.split("\n")[1])
    if size == 0:
        return []
    page = api.get(f"{LOG}/entries", params={"start": 0, "end": size})
    assert page.status_code == 200, page.text
    return [item["entry"] for item in page.json()["entries"]]


def _negotiate(city: Node, tapi: httpx.Client, capi: httpx.Client, asset_id: str) -> tuple[str, str]:
    offer = catalog_offer(tapi, city.did, city.dsp_url, asset_id)
    consumer_id = start_negotiation(tapi, contract_request(city.did, city.dsp_url, offer, asset_id))
    provider_id = counterpart(capi, negotiation(tapi, consumer_id)["consumerPid"])["@id"]
    return consumer_id, provider_id


def _logged(api: httpx.Client, kind: str, **match: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for entry in _entries(api):
            if entry["kind"] == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    entry: dict[str, Any] = wait_until(found, what=f"a {kind} entry {match}")
    return entry


def test_agreements_and_refusals_are_logged_on_both_sides_and_verify_offline(
    nodes: tuple[Node, Node, httpx.Client, httpx.Client],
) -> None:
    city, transit, capi, tapi = nodes
    publish(capi, "logged-stops")
    consumer_id, provider_id = _negotiate(city, tapi, capi, "logged-stops")
    consumer = wait_for(tapi, consumer_id, "FINALIZED", "TERMINATED")
    wait_for(capi, provider_id, "FINALIZED", "TERMINATED")
    agreement_id = consumer["contractAgreementId"]
    ours = _logged(capi, "agreement.finalized", agreementId=agreement_id)
    theirs = _logged(tapi, "agreement.finalized", agreementId=agreement_id)
    assert (ours["role"], theirs["role"]) == ("provider", "consumer")
    for entry in (ours, theirs):
        assert (entry["provider"], entry["consumer"], entry["dataset"]) == (
            city.did,
            transit.did,
            "logged-stops",
        )
        assert entry["providerSignature"]
        assert entry["consumerSignature"]
    assert ours["agreementSha256"] == theirs["agreementSha256"]
    assert ours["providerSignature"] == theirs["providerSignature"]

    utilities_only = policy_body(
        "utilities-only-log", [rule(constraint("membership", "isAnyOf", ["utility"]))]
    )
    publish(capi, "refused-logged", contract=utilities_only)
    consumer_id, provider_id = _negotiate(city, tapi, capi, "refused-logged")
    wait_for(tapi, consumer_id, "TERMINATED")
    refused_here = _logged(capi, "refusal", negotiationId=provider_id)
    assert (refused_here["by"], refused_here["code"], refused_here["counterParty"]) == (
        "us",
        "policy",
        transit.did,
    )
    assert refused_here["policyDecision"]["allowed"] is False
    assert "membership" in refused_here["policyDecision"]["explanation"]
    refused_there = _logged(tapi, "refusal", negotiationId=consumer_id)
    assert refused_there["by"] == "counter-party"
    assert "contract policy does not admit" in refused_there["reason"]

    exported = capi.get(f"{LOG}/export", params={"from": "2020-01-01"})
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/zip"
    report = verify_bundle(io.BytesIO(exported.content))
    assert report.ok, report.render()
    assert "agreement(s): documents match the log, signatures verify" in report.render()
    bad = capi.get(f"{LOG}/export", params={"from": "soon"})
    assert bad.status_code == 400
    assert bad.json()["parameter"] == "from"


def test_connectors_witness_each_other_over_http(
    nodes: tuple[Node, Node, httpx.Client, httpx.Client],
) -> None:
    city, transit, capi, tapi = nodes
    publish(capi, "witnessed-stops")
    consumer_id, _ = _negotiate(city, tapi, capi, "witnessed-stops")
    wait_for(tapi, consumer_id, "FINALIZED")
    results = tapi.post(f"{LOG}/witness")
    assert results.status_code == 200, results.text
    by_member = {r["member"]: r for r in results.json()}
    assert by_member[city.did]["status"] == "cosigned", by_member
    note = httpx.get(f"{city.base_url}/log/checkpoint").text
    assert f"\u2014 {transit.did} " in note
    witnessed = tapi.get(f"{LOG}/witnessed").json()
    assert [w["member"] for w in witnessed] == [city.did]
    assert tapi.get(f"{LOG}/alerts").json() == []
    assert json.loads(capi.get(f"{LOG}/alerts").text) == []
