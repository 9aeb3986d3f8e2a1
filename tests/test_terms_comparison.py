"""When an automatic consumer takes two sets of ODRL rules for the same terms (contracts.agreed_terms).

Equal however written (JSON-LD), different whenever an obligation, constraint, value or action
differs: an automatic consumer counter-signs only the terms it asked for.
"""

from __future__ import annotations

from typing import Any

import pytest

from contracts.agreed_terms import terms_key

PURPOSE_X = {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"}
BASE: dict[str, Any] = {"permission": [{"action": "use", "constraint": [PURPOSE_X]}]}

SAME: list[dict[str, Any]] = [
    {"permission": [{"action": "odrl:use", "constraint": [PURPOSE_X]}]},  # a prefixed action
    {"permission": [{"action": "use", "constraint": [{**PURPOSE_X, "leftOperand": "odrl:purpose"}]}]},
    {"permission": [{"action": "use", "constraint": [PURPOSE_X], "duty": []}], "prohibition": []},
    {"permission": {"action": "use", "constraint": PURPOSE_X}},  # single values, not lists
    {"permission": [{"constraint": [PURPOSE_X], "action": "use"}], "target": "elsewhere"},  # rules only
]

DIFFERENT: list[dict[str, Any]] = [
    {"permission": [{"action": "use"}]},  # the constraint dropped
    {"permission": [{"action": "use", "constraint": [{**PURPOSE_X, "rightOperand": "y"}]}]},
    {"permission": [{"action": "use", "constraint": [{**PURPOSE_X, "operator": "neq"}]}]},
    {"permission": [{"action": "distribute", "constraint": [PURPOSE_X]}]},
    {**BASE, "obligation": [{"action": "compensate"}]},
    {**BASE, "prohibition": [{"action": "distribute"}]},
    {"permission": [{"action": "use", "constraint": [PURPOSE_X], "duty": [{"action": "compensate"}]}]},
]


@pytest.mark.parametrize("other", SAME)
def test_the_same_rules_written_otherwise_are_the_same_terms(other: dict[str, Any]) -> None:
    assert terms_key(BASE) is not None
    assert terms_key(other) == terms_key(BASE)


@pytest.mark.parametrize("other", DIFFERENT)
def test_other_rules_are_other_terms(other: dict[str, Any]) -> None:
    assert terms_key(other) != terms_key(BASE)


def test_rules_are_compared_as_sets_but_rdf_lists_keep_their_order() -> None:
    two = [{"action": "use"}, {"action": "distribute"}]
    assert terms_key({"permission": two}) == terms_key({"permission": list(reversed(two))})
    listed = {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": {"@list": ["a", "b"]}}
    reordered = {**listed, "rightOperand": {"@list": ["b", "a"]}}
    assert terms_key({"permission": [{"action": "use", "constraint": [listed]}]}) != terms_key(
        {"permission": [{"action": "use", "constraint": [reordered]}]}
    )


def test_rules_that_cannot_be_read_are_never_the_same_terms() -> None:
    assert terms_key({"permission": [{"action": "use", "@context": "https://example.org/unknown"}]}) is None
