"""A Casbin adapter over the connector's database: table ``casbin_rule`` (ptype, v0..v5).

SQLAlchemy Core, bulk both ways: loading is one SELECT whose rows are appended
to the model's policy lists (never ``add_policies`` row by row: quadratic in
pycasbin 2.8), writing many rows is one ``executemany`` INSERT.

Bound to an ``Engine``, each write is its own transaction; bound to a
``Connection``, writes join the caller's transaction (so a policy definition
and its compiled rules commit or roll back together).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from casbin import persist
from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, delete, insert, select

from contracts.models import CasbinRuleRow

RULES: Table = cast(Table, CasbinRuleRow.__table__)  # type: ignore[attr-defined]
FIELDS = ("v0", "v1", "v2", "v3", "v4", "v5")
CHUNK = 500  # ids per IN (...) list


def _values(row: Any) -> list[str]:
    """The rule's values: v0..v5 up to the last one present (an empty string is a value)."""
    found = [row[i] for i in range(1, 7)]
    while found and found[-1] is None:
        found.pop()
    return ["" if v is None else str(v) for v in found]


def _record(ptype: str, rule: Iterable[str]) -> dict[str, str | None]:
    values = list(rule)
    if len(values) > len(FIELDS):
        raise ValueError(f"a casbin rule has at most {len(FIELDS)} values, not {len(values)}")
    record: dict[str, str | None] = {"ptype": ptype}
    record.update({field: (values[i] if i < len(values) else None) for i, field in enumerate(FIELDS)})
    return record


class SqlAlchemyAdapter(persist.FilteredAdapter, persist.BatchAdapter):  # type: ignore[misc]
    """Casbin's Adapter, FilteredAdapter and BatchAdapter over ``casbin_rule``.

    A filter for ``load_filtered_policy`` is a collection of v0 values (here: policy ids).
    """

    def __init__(self, bind: Engine | Connection) -> None:
        self._bind = bind
        self._filtered = False

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Connection]:
        if isinstance(self._bind, Connection):
            yield self._bind
        elif write:
            with self._bind.begin() as connection:
                yield connection
        else:
            with self._bind.connect() as connection:
                yield connection

    # ------------------------------------------------------------ reading

    def rules(self, v0_values: Collection[str] | None = None) -> Iterator[tuple[str, list[str]]]:
        """(ptype, values) of every stored rule, or of those whose v0 is one of ``v0_values``."""
        columns = (RULES.c.ptype, *(RULES.c[f] for f in FIELDS))
        with self._connection(write=False) as connection:
            if v0_values is None:
                for row in connection.execute(select(*columns).order_by(RULES.c.id)):
                    yield row[0], _values(row)
                return
            wanted = list(v0_values)
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                statement = select(*columns).where(RULES.c.v0.in_(chunk)).order_by(RULES.c.id)
                for row in connection.execute(statement):
                    yield row[0], _values(row)

    @staticmethod
    def _append(model: Any, rules: Iterable[tuple[str, list[str]]]) -> None:
        sections = model.model
        for ptype, values in rules:
            section = sections.get(ptype[:1])
            if section is not None and ptype in section:
                section[ptype].policy.append(values)

    def load_policy(self, model: Any) -> None:
        self._filtered = False
        self._append(model, self.rules())

    def load_filtered_policy(self, model: Any, filter: Collection[str]) -> None:
        self._filtered = True
        self._append(model, self.rules(filter))

    def is_filtered(self) -> bool:
        return self._filtered

    # ------------------------------------------------------------ writing

    def save_policy(self, model: Any) -> bool:
        records = [
            _record(ptype, rule)
            for sec in ("p", "g")
            for ptype, assertion in model.model.get(sec, {}).items()
            for rule in assertion.policy
        ]
        with self._connection(write=True) as connection:
            connection.execute(delete(RULES))
            if records:
                connection.execute(insert(RULES), records)
        return True

    def add_policy(self, sec: str, ptype: str, rule: list[str]) -> bool:
        return self.add_policies(sec, ptype, [rule])

    def add_policies(self, sec: str, ptype: str, rules: Iterable[list[str]]) -> bool:
        records = [_record(ptype, rule) for rule in rules]
        if records:
            with self._connection(write=True) as connection:
                connection.execute(insert(RULES), records)
        return True

    def _matching(self, ptype: str, field_index: int, field_values: Iterable[str]) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = [RULES.c.ptype == ptype]
        for offset, value in enumerate(field_values):
            if value != "":  # Casbin's convention: an empty filter value matches anything
                conditions.append(RULES.c[FIELDS[field_index + offset]] == value)
        return and_(*conditions)

    def remove_policy(self, sec: str, ptype: str, rule: list[str]) -> bool:
        return self.remove_policies(sec, ptype, [rule])

    def remove_policies(self, sec: str, ptype: str, rules: Iterable[list[str]]) -> bool:
        removed = 0
        with self._connection(write=True) as connection:
            for rule in rules:
                record = _record(ptype, rule)
                condition = and_(
                    *(RULES.c[k] == v if v is not None else RULES.c[k].is_(None) for k, v in record.items())
                )
                removed += connection.execute(delete(RULES).where(condition)).rowcount
        return removed > 0

    def remove_filtered_policy(self, sec: str, ptype: str, field_index: int, *field_values: str) -> bool:
        if not 0 <= field_index < len(FIELDS) or field_index + len(field_values) > len(FIELDS):
            raise ValueError("the filter names fields beyond v5")
        with self._connection(write=True) as connection:
            result = connection.execute(delete(RULES).where(self._matching(ptype, field_index, field_values)))
        return result.rowcount > 0
