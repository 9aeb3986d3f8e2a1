"""The bodies of ``POST /policydefinitions/{id}/validate`` and ``/explain``.

Explain takes a hypothetical request — who asks (``participantId``,
``memberships``), for what (``purpose``, ``action``), when (``dateTime``,
``agreedAt``) and how often (``count``) — and answers with the decision and
every rule, constraint by constraint: the operator's "why (not)?".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from catalog.jsonld import EDC_RESPONSE_CONTEXT
from connector.management.errors import ManagementApiError
from policies.decision import RequestContext, Stage
from policies.engine import Explanation

EXPLAIN_FIELDS = frozenset(
    {"participantId", "memberships", "purpose", "dateTime", "agreedAt", "count", "spatial", "action", "stage"}
)
IGNORED_FIELDS = frozenset({"@context", "@type"})


def _bad(message: str, path: str, value: Any = None) -> ManagementApiError:
    return ManagementApiError(400, "InvalidRequest", message, path, value)


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"{key} is mandatory", key)
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 2048:
        raise _bad(f"{key} must be a non-empty string of at most 2048 characters", key, value)
    return value


def _time(body: dict[str, Any], key: str) -> datetime | None:
    value = _text(body, key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{key} must be an ISO 8601 date and time", key, value) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _memberships(body: dict[str, Any]) -> frozenset[str]:
    value = body.get("memberships")
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value) or len(value) > 100:
        raise _bad("memberships must be a list of at most 100 non-empty strings", "memberships", value)
    return frozenset(value)


def _count(body: dict[str, Any]) -> int | None:
    value = body.get("count")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad("count must be a whole number, 0 or more", "count", value)
    return value


STAGES: tuple[Stage, ...] = ("catalog", "negotiation", "usage")


def _stage(body: dict[str, Any]) -> Stage:
    value = body.get("stage", "usage")
    for stage in STAGES:
        if value == stage:
            return stage
    raise _bad(f"stage must be one of {', '.join(STAGES)}", "stage", value)


def explain_request(body: Any) -> tuple[RequestContext, str]:
    """The request context and action an explain body describes; 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object", "")
    unknown = sorted(k for k in body if k not in EXPLAIN_FIELDS | IGNORED_FIELDS)
    if unknown:
        raise _bad(
            f"{unknown[0]} is not understood (expected: {', '.join(sorted(EXPLAIN_FIELDS))})",
            unknown[0],
            unknown[0],
        )
    participant = _text(body, "participantId", required=True)
    assert participant is not None
    context = RequestContext(
        participant_id=participant,
        memberships=_memberships(body),
        purpose=_text(body, "purpose"),
        now=_time(body, "dateTime") or datetime.now(UTC),
        agreed_at=_time(body, "agreedAt"),
        access_count=_count(body),
        location=_text(body, "spatial"),
        stage=_stage(body),
    )
    return context, _text(body, "action") or "use"


def explanation_body(explanation: Explanation) -> dict[str, Any]:
    return {
        "policyId": explanation.policy_id,
        "action": explanation.action,
        "allowed": explanation.decision.allowed,
        "reasons": list(explanation.decision.reasons),
        "rules": [
            {
                "rule": rule.rule,
                "kind": rule.kind,
                "action": rule.action,
                "applies": rule.applies,
                "holds": rule.holds,
                "constraints": [
                    {"constraint": c.constraint, "holds": c.holds, "reason": c.reason}
                    for c in rule.constraints
                ],
            }
            for rule in explanation.rules
        ],
    }


def validation_body(errors: list[str]) -> dict[str, Any]:
    """EDC's ``PolicyValidationResult``."""
    return {
        "@context": dict(EDC_RESPONSE_CONTEXT),
        "@type": "PolicyValidationResult",
        "isValid": not errors,
        "errors": errors,
    }
