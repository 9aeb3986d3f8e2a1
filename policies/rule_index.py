"""Casbin's policy list for ``p``, indexed by policy id, each thread seeing one policy's rows.

Casbin's ``enforce`` walks every row of the model; at 0.1 ms a row that is
unusable for thousands of policies. Its ``FastEnforcer`` indexes rows, but
in pycasbin 2.8 it keeps the selected key in the shared policy object (two
threads deciding for two policies at once would see each other's rows),
cannot list its rows when indexed by one key, and loses its index after
``remove_filtered_policy``. This container is what Casbin's model holds in
their place: a dict from policy id to that policy's rows, and a per-thread
selection, so a decision consults only the rows of the policy it is about.

Rows of one policy are a tuple replaced as a whole: a reader holds either
the old tuple or the new one, never half of each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any


class PolicyRowIndex:
    def __init__(self) -> None:
        self._rows: dict[str, tuple[list[str], ...]] = {}
        self._selected = threading.local()

    # ------------------------------------------------------------ the selection (one thread's view)

    def select(self, policy_id: str) -> None:
        """From now on, in this thread, the list holds the rows of ``policy_id`` only."""
        self._selected.rows = self._rows.get(policy_id, ())

    def clear_selection(self) -> None:
        self._selected.rows = None

    def _visible(self) -> Sequence[list[str]]:
        rows: Sequence[list[str]] | None = getattr(self._selected, "rows", None)
        if rows is not None:
            return rows
        return [row for rows_of_policy in list(self._rows.values()) for row in rows_of_policy]

    # ------------------------------------------------------------ what Casbin's model uses of a list

    def __iter__(self) -> Iterator[list[str]]:
        return iter(self._visible())

    def __len__(self) -> int:
        return len(self._visible())

    def __getitem__(self, index: int) -> list[str]:
        return self._visible()[index]

    def __contains__(self, rule: object) -> bool:
        if not isinstance(rule, list | tuple) or not rule:
            return False
        return list(rule) in self._rows.get(str(rule[0]), ())

    def append(self, rule: list[str]) -> None:
        self._rows[rule[0]] = (*self._rows.get(rule[0], ()), list(rule))

    def extend(self, rules: Sequence[list[str]]) -> None:
        for rule in rules:
            self.append(rule)

    def remove(self, rule: list[str]) -> None:
        rows = self._rows.get(rule[0], ())
        if list(rule) not in rows:
            raise ValueError("no such rule")
        kept = list(rows)
        kept.remove(list(rule))
        self.replace(rule[0], kept)

    def __deepcopy__(self, _memo: dict[int, Any]) -> PolicyRowIndex:
        copy = PolicyRowIndex()
        copy._rows = {pid: tuple(list(r) for r in rows) for pid, rows in self._rows.items()}
        return copy

    # ------------------------------------------------------------ whole policies

    def replace(self, policy_id: str, rows: Sequence[list[str]]) -> None:
        if rows:
            self._rows[policy_id] = tuple(rows)
        else:
            self._rows.pop(policy_id, None)

    def drop(self, policy_id: str) -> None:
        self._rows.pop(policy_id, None)

    def rows_of(self, policy_id: str) -> tuple[list[str], ...]:
        return self._rows.get(policy_id, ())

    def policy_count(self) -> int:
        return len(self._rows)

    def row_count(self) -> int:
        return sum(len(rows) for rows in list(self._rows.values()))
