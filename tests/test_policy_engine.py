"""The policy engine: ODRL policy definitions compiled to Casbin rows, decided by Casbin, explained.

Policies go in the way operators upload them (the Management API) or straight
through the store; decisions are compared with ``policies.decision.decide``,
the reference reading of the W3C recommendation, on generated policies and
requests. Replicas are second ``PolicyEngine`` objects on the same database.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import casbin
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from structlog.testing import capture_logs

from catalog.jsonld import EDC_NS, ODRL_NS, expand_management_input, first_node
from policies import decision as decision_module
from policies import engine as engine_module
from policies import rule_store
from policies.casbin_adapter import SqlAlchemyAdapter
from policies.decision import Decision, RequestContext, decide
from policies.definitions import create_policy_definition, delete_policy_definition, replace_policy_definition
from policies.dsp_form import offer_to_dsp
from policies.engine import CASBIN_LOGGERS, ENGINE_ERROR, PolicyEngine, call_matcher, silence_casbin
from policies.odrl import Policy, parse_policy
from policies.rule_store import RULES_VERSION
from tests.catalog_helpers import (
    POLICIES,
    constraint,
    create,
    edc_error,
    management,
    offer_errors,
    policy_body,
    rule,
)
from tests.conftest import Participant
from tests.policy_engine_helpers import NOW, random_context, random_record

MakeConnector = Callable[..., Participant]
TRANSIT = "did:web:transit.example.org"
UTILITY = "did:web:utility.example.org"
TRANSPORT = constraint("membership", "isAnyOf", ["transport-operator"])
PLANNING = constraint("purpose", "isAnyOf", ["traffic-planning"])


def context(*memberships: str, participant: str = TRANSIT, **more: Any) -> RequestContext:
    return RequestContext(participant_id=participant, memberships=frozenset(memberships), now=NOW, **more)


def stored_rows(participant: Participant, policy_id: str) -> list[list[str]]:
    with participant.core.engine.connect() as connection:
        found = connection.execute(
            text("SELECT ptype, v0, v1, v2, v3, v4, v5 FROM casbin_rule WHERE v0 = :id ORDER BY id"),
            {"id": policy_id},
        )
        return [list(row) for row in found]


def counter(participant: Participant, name: str) -> int:
    with participant.core.engine.connect() as connection:
        found = connection.execute(
            text("SELECT version FROM policy_engine_version WHERE name = :name"), {"name": name}
        ).scalar()
    return int(found or 0)


def set_stored_policy(participant: Participant, policy_id: str, node: dict[str, Any]) -> None:
    """Change a definition behind the store's back, as a database of an older version may hold it."""
    with participant.core.engine.begin() as connection:
        connection.execute(
            text("UPDATE policy_definition SET policy = :policy WHERE id = :id"),
            {"policy": json.dumps(node), "id": policy_id},
        )


def stored_node(participant: Participant, policy_id: str) -> dict[str, Any]:
    with participant.core.engine.connect() as connection:
        found = connection.execute(
            text("SELECT policy FROM policy_definition WHERE id = :id"), {"id": policy_id}
        ).scalar_one()
    node: dict[str, Any] = json.loads(found)
    return node


# ---------------------------------------------------------------- compile, decide, replicas


def test_policies_are_compiled_stored_decided_and_kept_in_sync_across_replicas(
    make_connector: MakeConnector, database_url: str
) -> None:
    city = make_connector("city", database_url=database_url)
    api = management(city)
    engine = city.core.policy_engine
    replica = PolicyEngine(city.core.engine, check_interval=0.0)  # checks the version on every decision
    before = counter(city, RULES_VERSION)

    create(api, POLICIES, policy_body("planning", [rule(TRANSPORT, PLANNING)]))
    assert counter(city, RULES_VERSION) == before + 1
    rows = stored_rows(city, "planning")
    revision = str(before + 1)
    assert rows == [["p", "planning", "use", f"planning#permission/0@{revision}", "allow", revision, "1"]]
    assert [list(r) for r in engine.rows_of("planning")] == [r[1:] for r in rows]

    allowed = engine.decide("planning", context("transport-operator", purpose="traffic-planning"))
    assert allowed == Decision(True, ("admitted by permission 1 (use)",))
    denied = engine.decide("planning", context("transport-operator", purpose="marketing"))
    assert not denied.allowed
    assert denied.reasons == (
        "denied because permission 1 (use): purpose 'marketing' is not in {'traffic-planning'}",
    )
    # The replica sees the new policy, decides alike, and follows a replacement and a deletion.
    assert replica.decide("planning", context("transport-operator", purpose="traffic-planning")).allowed
    assert api.put(f"{POLICIES}/planning", json=policy_body("planning", [rule(PLANNING)])).status_code == 204
    assert engine.decide("planning", context(purpose="traffic-planning")).allowed  # this replica: at once
    assert replica.decide("planning", context(purpose="traffic-planning")).allowed
    assert replica.rows_of("planning") == engine.rows_of("planning")
    assert api.delete(f"{POLICIES}/planning").status_code == 204
    assert stored_rows(city, "planning") == []
    gone = Decision(False, ("policy definition planning does not exist",))
    assert engine.decide("planning", context(purpose="traffic-planning")) == gone
    assert replica.decide("planning", context(purpose="traffic-planning")) == gone


def test_a_replica_checks_the_version_at_most_every_interval(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    now = [0.0]
    replica = PolicyEngine(city.core.engine, check_interval=1.0, clock=lambda: now[0])
    with Session(city.core.engine) as session:
        create_policy_definition(session, random_record(random.Random(1), "late"))
    now[0] = 0.5
    assert replica.decide("late", context()).reasons == ("policy definition late does not exist",)
    now[0] = 1.5
    assert replica.knows("late") is False
    replica.decide("late", context())
    assert replica.knows("late")


def test_the_engine_decides_exactly_as_decide_on_generated_policies(make_connector: MakeConnector) -> None:
    """Every operator, missing operands, bad right operands, clashes under each conflict strategy."""
    city = make_connector("city")
    rng = random.Random(20260601)
    early = PolicyEngine(city.core.engine)  # catches up incrementally
    records = [random_record(rng, f"generated-{i}") for i in range(250)]
    with Session(city.core.engine) as session:
        for record in records:
            create_policy_definition(session, record)
    early.refresh()
    fresh = PolicyEngine(city.core.engine)  # loads at start-up
    compared = allowed = 0
    for record in records:
        for _ in range(12):
            request = random_context(rng)
            for action in ("use", "distribute", "read"):
                expected = decide(record.policy, request, (action,))
                assert early.decide(record.id, request, action) == expected, (record.policy, request, action)
                assert fresh.decide(record.id, request, action) == expected, (record.policy, request, action)
                compared += 1
                allowed += expected.allowed
    assert compared == 9000
    assert 0.1 < allowed / compared < 0.6, "the generated cases exercise both outcomes"


def test_decisions_in_many_threads_see_only_their_own_policy(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    rng = random.Random(7)
    records = [random_record(rng, f"threaded-{i}") for i in range(40)]
    with Session(city.core.engine) as session:
        for record in records:
            create_policy_definition(session, record)
    engine = PolicyEngine(city.core.engine)
    cases = [(r, random_context(rng)) for r in records for _ in range(25)]
    expected = [decide(r.policy, c) for r, c in cases]
    barrier = threading.Barrier(8)

    def work(offset: int) -> list[bool]:
        barrier.wait()
        order = cases[offset:] + cases[:offset]
        decisions = [engine.decide(r.id, c) for r, c in order for _ in range(3)][::3]
        return [d == e for d, e in zip(decisions, expected[offset:] + expected[:offset], strict=True)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(0, 800, 100)))
    assert all(all(r) for r in results)


# ---------------------------------------------------------------- failing closed, logging


def test_an_unknown_policy_is_denied(make_connector: MakeConnector) -> None:
    engine = PolicyEngine(make_connector("city").core.engine)
    assert engine.decide("nope", context()) == Decision(False, ("policy definition nope does not exist",))


@pytest.fixture
def planning_engine(make_connector: MakeConnector) -> tuple[Participant, PolicyEngine]:
    city = make_connector("city")
    create(management(city), POLICIES, policy_body("planning", [rule(TRANSPORT, PLANNING)]))
    return city, PolicyEngine(city.core.engine)


def test_an_engine_error_denies_and_is_logged_without_the_request(
    planning_engine: tuple[Participant, PolicyEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _city, engine = planning_engine
    personal = context(
        "transport-operator", participant="did:web:alice.example.org", purpose="traffic-planning"
    )
    assert engine.decide("planning", personal).allowed

    def broken(_context: RequestContext) -> bool:
        raise ValueError(f"cannot read {_context.participant_id}")

    [ref] = [row[2] for row in engine.rows_of("planning")]
    monkeypatch.setitem(engine._conditions, ref, broken)
    with capture_logs() as logs:
        assert engine.decide("planning", personal) == Decision(False, (ENGINE_ERROR,))
    assert logs == [
        {
            "event": "policy engine error",
            "policy_id": "planning",
            "action": "use",
            "error": "ValueError",
            "log_level": "error",
        }
    ]
    monkeypatch.undo()
    monkeypatch.setattr(engine._enforcer, "enforce", lambda *_args: True)  # Casbin admits, the rules do not
    with capture_logs() as logs:
        decision = engine.decide("planning", context(purpose="marketing"))
    assert decision == Decision(False, (ENGINE_ERROR,))
    assert [entry["error"] for entry in logs] == ["_Disagreement"]


def test_a_refusal_is_worded_when_read_and_a_failure_to_word_it_still_denies(
    planning_engine: tuple[Participant, PolicyEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _city, engine = planning_engine
    worded: list[str] = []
    real_refusal = decision_module.refusal

    def counting(*args: Any) -> tuple[str, ...]:
        worded.append("refusal")
        return real_refusal(*args)

    monkeypatch.setattr(engine_module, "refusal", counting)
    refused = engine.decide("planning", context(purpose="marketing"))
    assert not refused.allowed
    assert worded == []  # a caller that only filters never pays for the words
    assert "marketing" in refused.explanation
    assert "traffic-planning" in refused.reasons[0]
    assert worded == ["refusal"]  # worded once, however often read

    def broken(*_args: Any) -> tuple[str, ...]:
        raise ValueError("cannot word it")

    monkeypatch.setattr(engine_module, "refusal", broken)
    with capture_logs() as logs:
        refused = engine.decide("planning", context(purpose="marketing"))
        assert not refused.allowed
        assert refused.reasons == (ENGINE_ERROR,)
    assert [(entry["event"], entry["error"]) for entry in logs] == [("policy engine error", "ValueError")]


def test_the_casbin_matcher_is_evaluated_as_its_one_call_and_other_shapes_keep_casbins_evaluator() -> None:
    calls: list[tuple[Any, ...]] = []

    def holds(*args: Any) -> bool:
        calls.append(args)
        return bool(args[0] == args[1])

    matcher = call_matcher("holds(p_pol, r_pol)", {"holds": holds})
    assert matcher is not None
    assert matcher.eval({"p_pol": "a", "r_pol": "a", "r_ctx": 1}) is True
    assert matcher.eval({"p_pol": "a", "r_pol": "b"}) is False
    assert calls == [("a", "a"), ("a", "b")]
    for other in ("holds(p_pol, r_pol) and r_ok", "holds(p_pol, r.x)", "holds(p_pol, k=r_pol)",
                  "unknown(p_pol)", "holds(", ""):  # fmt: skip
        assert call_matcher(other, {"holds": holds}) is None, other


def test_a_failing_version_check_keeps_deciding_on_what_is_loaded(
    planning_engine: tuple[Participant, PolicyEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _city, engine = planning_engine

    def unreachable(_connection: object) -> int:
        raise OperationalError("SELECT version", {}, Exception("server closed the connection"))

    monkeypatch.setattr(rule_store, "read_version", unreachable)
    monkeypatch.setattr(engine, "_next_check", 0.0)  # a check is due
    with capture_logs() as logs:
        assert engine.decide("planning", context("transport-operator", purpose="traffic-planning")).allowed
    assert [(e["event"], e["error"]) for e in logs] == [
        ("policy engine version check failed", "OperationalError")
    ]


def test_casbin_logs_nothing(
    planning_engine: tuple[Participant, PolicyEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """Casbin logs each request with all its attributes (personal data); none of it may reach our logs."""
    city, engine = planning_engine
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep(logging.DEBUG)
    for name in CASBIN_LOGGERS:  # as in a fresh process, before any engine silenced them
        logging.getLogger(name).disabled = False
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("casbin").propagate = True
    logging.getLogger("casbin").addHandler(keep)
    caplog.set_level(logging.DEBUG)
    try:
        replica = PolicyEngine(city.core.engine)  # building a model and an enforcer logs in Casbin too
        personal = context("health", participant="did:web:alice.example.org", purpose="marketing")
        for deciding in (engine, replica):
            assert not deciding.decide("planning", personal).allowed
            assert deciding.decide(
                "planning", context("transport-operator", purpose="traffic-planning")
            ).allowed
        raw = casbin.Enforcer(casbin.Enforcer.new_model(text=ACL_MODEL), None, enable_log=False)
        raw.enforce("did:web:alice.example.org", "data", "read")
    finally:
        logging.getLogger("casbin").removeHandler(keep)
        silence_casbin()
    assert seen == []
    assert [r for r in caplog.records if r.name.startswith("casbin")] == []
    assert "alice" not in caplog.text


# ---------------------------------------------------------------- conflicts at upload


def test_clashing_rules_need_a_conflict_strategy_at_upload(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    api = management(city)
    utility = constraint("membership", "isAnyOf", ["utility"])
    clashing = {"permissions": [rule(TRANSPORT)], "prohibitions": [rule(utility)]}
    for strategy in (None, "invalid"):
        refused = api.post(POLICIES, json=policy_body("clash", **clashing, conflict=strategy))
        error = edc_error(refused, 400, "ValidationFailure", "permission 1 (use)", "prohibition 1 (use)")
        assert error["path"] == "policy/conflict"
    edc_error(
        api.post(POLICIES, json=policy_body("clash", **clashing, conflict="whatever")),
        400,
        "ValidationFailure",
        "whatever",
    )
    # Rules on different actions do not clash.
    create(api, POLICIES, policy_body("apart", [rule(TRANSPORT)], [rule(action="distribute")]))
    edc_error(
        api.post(POLICIES, json=policy_body("long", [rule(action="https://example.org/" + "a" * 600)])),
        400,
        "ValidationFailure",
        "longer than the 512 characters",
    )

    create(api, POLICIES, policy_body("perm", **clashing, conflict="perm"))
    create(api, POLICIES, policy_body("prohibit", **clashing, conflict="prohibit"))
    engine = city.core.policy_engine
    both = context("transport-operator", "utility")
    assert engine.decide("perm", both) == Decision(
        True,
        (
            "admitted by permission 1 (use)",
            "prohibition 1 (use) holds but permission 1 (use) overrides it (conflict strategy perm)",
        ),
    )
    assert engine.decide("prohibit", both) == Decision(
        False, ("denied by prohibition 1 (use): membership isAnyOf 'utility'",)
    )
    assert not engine.decide("perm", context("utility")).allowed
    assert engine.decide("prohibit", context("transport-operator")).allowed


def test_offers_carry_the_conflict_strategy() -> None:
    """Which clashing rule wins is part of the terms a peer sees, and reads back the same."""
    utility = constraint("membership", "isAnyOf", ["utility"])
    body = policy_body("perm", [rule(TRANSPORT)], [rule(utility)], conflict="perm")
    policy = parse_policy_body(body)
    offer = offer_to_dsp(policy, "offer-1")
    assert offer["odrl:conflict"] == {"@id": "odrl:perm"}
    assert offer_errors(offer) == []
    echoed = {**body, "policy": {**offer, "@type": "Set"}}
    assert parse_policy_body(echoed) == policy
    assert "odrl:conflict" not in offer_to_dsp(parse_policy_body(policy_body("open")), "offer-2")


def parse_policy_body(body: dict[str, Any]) -> Policy:
    node = first_node(expand_management_input(body), EDC_NS + "policy")
    assert node is not None
    return parse_policy(node)


# ---------------------------------------------------------------- validate and explain


def test_validate_checks_the_stored_definition(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    api = management(city)
    utility = constraint("membership", "isAnyOf", ["utility"])
    create(api, POLICIES, policy_body("fine", [rule(TRANSPORT)], [rule(utility)], conflict="perm"))
    valid = api.post(f"{POLICIES}/fine/validate")
    assert valid.status_code == 200, valid.text
    body = valid.json()
    assert body["@type"] == "PolicyValidationResult"
    assert body["isValid"] is True
    assert body["errors"] == []
    assert body["@context"]["@vocab"] == "https://w3id.org/edc/v0.0.1/ns/"

    # A definition stored before conflicts were checked: clashing rules, no strategy.
    legacy = stored_node(city, "fine")
    del legacy[ODRL_NS + "conflict"]
    set_stored_policy(city, "fine", legacy)
    invalid = api.post(f"{POLICIES}/fine/validate").json()
    assert invalid["isValid"] is False
    [error] = invalid["errors"]
    assert "permission 1 (use) and prohibition 1 (use)" in error

    set_stored_policy(city, "fine", {"@type": [ODRL_NS + "Set"], ODRL_NS + "permission": [{}]})
    unreadable = api.post(f"{POLICIES}/fine/validate").json()
    assert unreadable["isValid"] is False
    assert "action" in unreadable["errors"][0]

    edc_error(api.post(f"{POLICIES}/nope/validate"), 404, "ObjectNotFound", "nope")
    assert city.client().post(f"{POLICIES}/fine/validate").status_code == 401


def test_explain_names_each_rule_and_constraint(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    api = management(city)
    before_2027 = constraint("dateTime", "lt", "2027-01-01T00:00:00Z")
    create(api, POLICIES, policy_body("planning", [rule(TRANSPORT, PLANNING, before_2027)]))
    asked = {
        "participantId": UTILITY,
        "memberships": ["utility"],
        "purpose": "marketing",
        "dateTime": "2026-06-01T12:00:00Z",
    }
    response = api.post(f"{POLICIES}/planning/explain", json=asked)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "policyId": "planning",
        "action": "use",
        "allowed": False,
        "reasons": [
            "denied because permission 1 (use): membership ['utility'] is not in {'transport-operator'}; "
            "purpose 'marketing' is not in {'traffic-planning'}"
        ],
        "rules": [
            {
                "rule": "permission 1 (use)",
                "kind": "permission",
                "action": "use",
                "applies": True,
                "holds": False,
                "constraints": [
                    {
                        "constraint": "membership isAnyOf 'transport-operator'",
                        "holds": False,
                        "reason": "membership ['utility'] is not in {'transport-operator'}",
                    },
                    {
                        "constraint": "purpose isAnyOf 'traffic-planning'",
                        "holds": False,
                        "reason": "purpose 'marketing' is not in {'traffic-planning'}",
                    },
                    {"constraint": "dateTime lt '2027-01-01T00:00:00Z'", "holds": True, "reason": None},
                ],
            }
        ],
    }
    later = {**asked, "memberships": ["transport-operator"], "purpose": "traffic-planning"}
    assert api.post(f"{POLICIES}/planning/explain", json=later).json()["allowed"] is True
    too_late = api.post(f"{POLICIES}/planning/explain", json={**later, "dateTime": "2027-06-01"}).json()
    assert too_late["allowed"] is False
    assert too_late["rules"][0]["constraints"][2]["holds"] is False
    # At negotiation the purpose waits for each access: the transport operator is admitted without one.
    negotiating = {**later, "stage": "negotiation"}
    del negotiating["purpose"]
    assert api.post(f"{POLICIES}/planning/explain", json=negotiating).json()["allowed"] is True
    assert (
        api.post(f"{POLICIES}/planning/explain", json={**negotiating, "stage": "usage"}).json()["allowed"]
        is False
    )

    for bad, named in [
        ({**asked, "stage": "transfer"}, "stage"),
        ({"memberships": ["utility"]}, "participantId"),
        ({**asked, "memberships": "utility"}, "memberships"),
        ({**asked, "dateTime": "yesterday"}, "dateTime"),
        ({**asked, "count": -1}, "count"),
        ({**asked, "membership": ["utility"]}, "membership"),
    ]:
        error = edc_error(api.post(f"{POLICIES}/planning/explain", json=bad), 400, "InvalidRequest", named)
        assert error["path"] == named
    edc_error(api.post(f"{POLICIES}/planning/explain", content=b"[1"), 400, "InvalidRequest")
    edc_error(api.post(f"{POLICIES}/nope/explain", json=asked), 404, "ObjectNotFound", "nope")


# ---------------------------------------------------------------- start-up and the adapter


def test_start_up_recompiles_rules_that_are_missing_or_of_an_older_layout(
    make_connector: MakeConnector,
) -> None:
    city = make_connector("city")
    create(management(city), POLICIES, policy_body("planning", [rule(PLANNING)]))
    create(management(city), POLICIES, policy_body("open"))
    with city.core.engine.begin() as connection:
        connection.execute(text("DELETE FROM casbin_rule"))  # as in a database from before the engine
    engine = PolicyEngine(city.core.engine)
    assert len(stored_rows(city, "planning")) == 1
    assert len(stored_rows(city, "open")) == 1
    assert engine.decide("planning", context(purpose="traffic-planning")).allowed
    assert engine.decide("open", context()).reasons == (
        "the policy has no permission rules: everyone is admitted",
    )

    with city.core.engine.begin() as connection:  # rows of an older layout
        connection.execute(text("UPDATE casbin_rule SET v5 = '0'"))
    before = counter(city, RULES_VERSION)
    engine = PolicyEngine(city.core.engine)
    assert counter(city, RULES_VERSION) > before
    assert {row[6] for row in stored_rows(city, "planning") + stored_rows(city, "open")} == {"1"}
    assert engine.decide("planning", context(purpose="traffic-planning")).allowed


def test_rows_of_a_newer_layout_are_left_alone_and_compiled_here(make_connector: MakeConnector) -> None:
    """A rolling upgrade: newer replicas wrote rows this code cannot read; it compiles the definition."""
    city = make_connector("city")
    create(management(city), POLICIES, policy_body("planning", [rule(PLANNING)]))
    with city.core.engine.begin() as connection:
        connection.execute(text("UPDATE casbin_rule SET v5 = '2', v1 = 'something-new'"))
    before = counter(city, RULES_VERSION)
    engine = PolicyEngine(city.core.engine)
    assert counter(city, RULES_VERSION) == before, "no recompiling into an older layout"
    assert engine.decide("planning", context(purpose="traffic-planning")).allowed
    assert not engine.decide("planning", context(purpose="marketing")).allowed


def test_a_definition_changed_behind_the_store_denies_everything(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    create(management(city), POLICIES, policy_body("planning", [rule(PLANNING)]))
    set_stored_policy(city, "planning", {"@type": [ODRL_NS + "Set"]})  # its rows still say "planning only"
    with capture_logs() as logs:
        decision = PolicyEngine(city.core.engine).decide("planning", context(purpose="traffic-planning"))
    assert not decision.allowed
    assert "do not match" in decision.explanation
    assert [entry["event"] for entry in logs] == ["stored policy rules do not match their definition"]


ACL_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
"""


def test_the_adapter_serves_casbin_as_any_adapter(make_connector: MakeConnector) -> None:
    city = make_connector("city")
    adapter = SqlAlchemyAdapter(city.core.engine)
    first = casbin.Enforcer(casbin.Enforcer.new_model(text=ACL_MODEL), adapter, enable_log=False)
    assert first.add_policy("alice", "trips", "read")  # auto-save: one row
    assert first.add_policies(
        [["bob", "trips", "read"], ["bob", "trips", "write"], ["carol", "bikes", "read"]]
    )
    assert first.remove_policy("carol", "bikes", "read")
    assert first.remove_filtered_policy(0, "bob", "", "write")
    second = casbin.Enforcer(casbin.Enforcer.new_model(text=ACL_MODEL), SqlAlchemyAdapter(city.core.engine))
    assert sorted(second.get_policy()) == [["alice", "trips", "read"], ["bob", "trips", "read"]]
    assert second.enforce("bob", "trips", "read")
    assert not second.enforce("bob", "trips", "write")

    second.add_policy("dave", "bikes", "read")
    second.save_policy()  # the whole model, written in bulk
    with city.core.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM casbin_rule")).scalar_one() == 3
    filtered = casbin.Enforcer(casbin.Enforcer.new_model(text=ACL_MODEL), None, enable_log=False)
    adapter.load_filtered_policy(filtered.model, ["dave"])
    assert adapter.is_filtered()
    assert filtered.get_policy() == [["dave", "bikes", "read"]]


def test_deleting_through_the_store_removes_the_rules_in_the_same_transaction(
    make_connector: MakeConnector,
) -> None:
    city = make_connector("city")
    record = random_record(random.Random(3), "stored")
    with Session(city.core.engine) as session:
        create_policy_definition(session, record)
        assert stored_rows(city, "stored")
        replace_policy_definition(session, random_record(random.Random(4), "stored"))
        revisions = {row[5] for row in stored_rows(city, "stored")}
        assert revisions == {str(counter(city, RULES_VERSION))}
        delete_policy_definition(session, "stored")
    assert stored_rows(city, "stored") == []
