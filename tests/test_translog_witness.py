"""Witnessing: members check each other's logs, cosign consistent checkpoints, and raise alerts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from connector.translog.checkpoint import log_verifier, witness_verifier
from connector.translog.note import open_note
from connector.translog.store import read_entries, tree_size
from connector.translog.witness import Witness, WitnessResult, witness_all
from identity.keys import generate_private_key, public_jwk
from identity.trustlist import Member
from tests.conftest import Participant
from tests.federated_helpers import InProcessDataspace, api_key, trust_each_other
from tests.translog_helpers import (
    append_refusals,
    forget_checkpoints,
    rewrite_history,
    signed_in_client,
    truncate_log,
)


def _round(witness: Witness, member: Participant) -> WitnessResult:
    return asyncio.run(witness_all(witness))[member.did]


def _alert_metric(participant: Participant) -> dict[str, float]:
    text = participant.client().get("/metrics").text
    return {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tessera_transfer_log_alerts_total"
    }


def test_a_witness_cosigns_growth_and_alerts_on_fork_rewrite_and_shrink(
    make_connector: Callable[..., Participant],
) -> None:
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    space = InProcessDataspace({"city": city, "transit": transit})
    core = transit.core
    witness = Witness(core.engine, transit.did, core.key, space.peer_client("transit"), core.metrics.registry)
    engine = city.core.engine

    append_refusals(engine, 4)
    assert _round(witness, city) == WitnessResult(city.did, "cosigned", 4)
    append_refusals(engine, 3, start=4)
    assert _round(witness, city) == WitnessResult(city.did, "cosigned", 7)
    assert _round(witness, city).status == "unchanged"

    # city now serves its checkpoint with transit's cosignature, which verifies with transit's key.
    note = city.client().get("/log/checkpoint").text
    opened = open_note(
        note,
        [
            log_verifier(city.did, city.core.key.public_key()),
            witness_verifier(transit.did, transit.core.key.public_key()),
        ],
    )
    assert set(opened.verified_by) == {city.did, transit.did}
    assert transit.did in opened.cosigned_at
    assert _alert_metric(transit) == {}

    # Entry 1 rewritten, the signer's memory wiped: city signs another root for size 7 (a fork).
    rewrite_history(engine, 1, "a different story")
    forget_checkpoints(engine)
    fork = _round(witness, city)
    assert fork.status == "alert"
    assert fork.detail is not None
    assert fork.detail.startswith("fork")
    # It grows on top of the rewritten history: the consistency proof from what we saw fails.
    append_refusals(engine, 2, start=7)
    rewrite = _round(witness, city)
    assert rewrite.status == "alert"
    assert rewrite.detail is not None
    assert rewrite.detail.startswith("rewrite")
    # Entries deleted: the log shrank below what we witnessed.
    truncate_log(engine, 5)
    forget_checkpoints(engine)
    shrink = _round(witness, city)
    assert shrink.detail is not None
    assert shrink.detail.startswith("shrink: the log shrank from 7 to 5")

    client = transit.client()
    alerts = client.get("/management/v3/transferlog/alerts", headers={"X-Api-Key": api_key(transit)}).json()
    assert sorted(a["kind"] for a in alerts) == ["fork", "rewrite", "shrink"]
    assert all(a["member"] == city.did for a in alerts)
    assert _alert_metric(transit) == {"fork": 1.0, "rewrite": 1.0, "shrink": 1.0}
    with core.engine.connect() as conn:
        logged = [json.loads(e.entry) for e in read_entries(conn, 0, tree_size(conn))]
    assert [(e["kind"], e["alert"], e["member"]) for e in logged] == [
        ("witness.alert", "fork", city.did),
        ("witness.alert", "rewrite", city.did),
        ("witness.alert", "shrink", city.did),
    ]
    # The operator page lists the alerts.
    html = signed_in_client(transit, api_key(transit)).get("/ui/transfer-log")
    assert html.status_code == 200
    assert "3 member log(s) were seen to fork, shrink or rewrite their history" in html.text
    assert "the log shrank from 7 to 5 entries" in html.text
    # The witness still holds the last good checkpoint (size 7), so the alert stays until someone acts.
    witnessed = client.get(
        "/management/v3/transferlog/witnessed", headers={"X-Api-Key": api_key(transit)}
    ).json()
    assert [(w["member"], w["size"]) for w in witnessed] == [(city.did, 7)]


def test_a_member_that_cannot_be_reached_or_sends_a_forged_checkpoint_is_a_failure_not_an_alert(
    make_connector: Callable[..., Participant],
) -> None:
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    space = InProcessDataspace({"city": city, "transit": transit})
    core = transit.core
    witness = Witness(core.engine, transit.did, core.key, space.peer_client("transit"), core.metrics.registry)
    space.take_down("city")
    result = _round(witness, city)
    assert result.status == "failed"
    assert result.detail is not None
    assert "could not be fetched" in result.detail
    # Back up, but signing with a key that is not the one transit pinned for city (a forged checkpoint).
    space.router.down.clear()
    with core.engine.begin() as conn:
        conn.execute(
            update(Member.__table__)  # type: ignore[attr-defined]
            .where(Member.__table__.c.did == city.did)  # type: ignore[attr-defined]
            .values(public_jwk=json.dumps(public_jwk(generate_private_key().public_key())))
        )
    forged = _round(witness, city)
    assert forged.status == "failed"
    assert forged.detail is not None
    assert "no signature from a known key" in forged.detail
    assert (
        transit.client()
        .get("/management/v3/transferlog/alerts", headers={"X-Api-Key": api_key(transit)})
        .json()
        == []
    )
