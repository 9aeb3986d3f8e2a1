"""The purposes an agreement binds its consumer to: what personal data may be released for.

Consent is asked for the purpose the consumer declared in its transfer request. Usage control
already checks at every access that the agreed policy admits that purpose; this module adds
what consent needs on top: that the agreement *binds* the purpose at all. A permission without
a purpose constraint lets the consumer use the data for anything, so under such an agreement
no personal record is released (fail closed).

The purposes are read from the agreement's own signed terms: the top-level ``purpose``
constraints (``eq``, ``isAnyOf``, ``isA``, ``isPartOf``) of each permission. A purpose named only
inside a logical constraint (``or``, ``xone``) does not count as binding.
"""

from __future__ import annotations

from contracts.agreed_terms import agreed_policy
from contracts.agreements import AgreementRecord
from policies.odrl import Atomic, PolicyError, Rule

BINDING_OPERATORS = frozenset({"eq", "isAnyOf", "isA", "isPartOf"})


class PurposeNotBound(Exception):
    """The agreement does not bind the declared purpose; ``str()`` says why."""


def _rule_purposes(rule: Rule) -> frozenset[str] | None:
    """The purposes one permission admits, or None when it does not constrain the purpose."""
    admitted: frozenset[str] | None = None
    for constraint in rule.constraints:
        if (
            isinstance(constraint, Atomic)
            and constraint.left == "purpose"
            and constraint.operator in BINDING_OPERATORS
        ):
            values = frozenset(str(v) for v in constraint.right)
            admitted = values if admitted is None else admitted & values
    return admitted


def agreed_purposes(agreement: AgreementRecord) -> frozenset[str] | None:
    """Every purpose the agreement's permissions admit; None when one of them admits any purpose."""
    try:
        policy = agreed_policy(agreement)
    except PolicyError as exc:
        raise PurposeNotBound(f"the agreed terms cannot be read ({exc})") from None
    purposes: set[str] = set()
    for rule in policy.permissions:
        admitted = _rule_purposes(rule)
        if admitted is None:
            return None
        purposes |= admitted
    return frozenset(purposes)


def consent_purpose(agreement: AgreementRecord, declared: str | None) -> str:
    """The purpose consent is asked for: the declared one, if the agreement binds the consumer to it."""
    purposes = agreed_purposes(agreement)
    if purposes is None:
        raise PurposeNotBound(
            f"agreement {agreement.id} does not restrict the purpose (a permission has no purpose "
            "constraint): personal data is released only for an agreed purpose"
        )
    if not declared:
        raise PurposeNotBound("the transfer request declared no purpose")
    if declared not in purposes:
        raise PurposeNotBound(
            f"the declared purpose {declared!r} is not one agreement {agreement.id} binds "
            f"({', '.join(sorted(purposes)) or 'none'})"
        )
    return declared
