"""The compiled rules in the database: ``casbin_rule`` rows and the ``policy_engine_version`` counter.

Every change to the rules bumps the counter first, in the transaction that
changes them: the bump locks the counter's row, so writers take turns, and
each replica's ``PolicyEngine`` learns from the counter that it must reload.
The new counter value is the revision stamped on the rows written (v4), so a
replica reloads only the policies whose revision it does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import casbin
from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from contracts.models import PolicyEngineVersionRow
from policies.casbin_adapter import RULES, SqlAlchemyAdapter
from policies.compiler import CASBIN_MODEL, LAYOUT, CompiledPolicy, compile_policy, compile_unreadable
from policies.odrl import Policy

VERSIONS: Table = cast(Table, PolicyEngineVersionRow.__table__)  # type: ignore[attr-defined]
RULES_VERSION = "policy-rules"  # bumped by every change to the rules
PTYPE = "p"


def _upsert(connection: Connection, name: str, value: Any = None) -> int:
    """Set counter ``name`` to ``value``, or increment it (1 if absent) when ``value`` is None; the new value."""
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            insert(VERSIONS)
            .values(name=name, version=1 if value is None else value)
            .on_conflict_do_update(
                index_elements=[VERSIONS.c.name],
                set_={"version": VERSIONS.c.version + 1 if value is None else value},
            )
            .returning(VERSIONS.c.version)
        )
        return int(connection.execute(statement).scalar_one())
    changed = connection.execute(
        update(VERSIONS)
        .where(VERSIONS.c.name == name)
        .values(version=VERSIONS.c.version + 1 if value is None else value)
    )
    if changed.rowcount == 0:
        connection.execute(VERSIONS.insert().values(name=name, version=1 if value is None else value))
    return read_counter(connection, name)


def bump_version(connection: Connection) -> int:
    """Increment the rules' version (locking its row until the transaction ends); the new version."""
    return _upsert(connection, RULES_VERSION, None)


def read_counter(connection: Connection, name: str) -> int:
    found = connection.execute(select(VERSIONS.c.version).where(VERSIONS.c.name == name)).scalar()
    return int(found) if found is not None else 0


def read_version(connection: Connection) -> int:
    return read_counter(connection, RULES_VERSION)


def stored_revisions(connection: Connection) -> dict[str, str]:
    """Policy id -> the revision of its stored rows (all rows of a policy are written together)."""
    statement = select(RULES.c.v0, func.max(RULES.c.v4)).where(RULES.c.ptype == PTYPE).group_by(RULES.c.v0)
    return {str(pid): str(rev) for pid, rev in connection.execute(statement)}


def new_model() -> Any:
    """A Casbin model of ``CASBIN_MODEL`` (its own policy lists, empty)."""
    return casbin.Enforcer.new_model(text=CASBIN_MODEL)


def write_policy_rules(connection: Connection, policy_id: str, policy: Policy) -> CompiledPolicy:
    """Compile ``policy`` and store its rows in place of any older ones, in the caller's transaction."""
    revision = str(bump_version(connection))
    compiled = compile_policy(policy_id, policy, revision)
    adapter = SqlAlchemyAdapter(connection)
    adapter.remove_filtered_policy(PTYPE, PTYPE, 0, policy_id)
    adapter.add_policies(PTYPE, PTYPE, compiled.rows)
    return compiled


def delete_policy_rules(connection: Connection, policy_id: str) -> None:
    bump_version(connection)
    SqlAlchemyAdapter(connection).remove_filtered_policy(PTYPE, PTYPE, 0, policy_id)


def recompile_all(connection: Connection, policies: Iterable[tuple[str, Policy | None]]) -> int:
    """Replace every stored rule by those compiled from ``policies`` (None: unreadable); the new version.

    One bulk write (Casbin's ``save_policy``), whatever the number of policies.
    """
    version = bump_version(connection)
    revision = str(version)
    model = new_model()
    rows = model.model["p"][PTYPE].policy
    for policy_id, policy in policies:
        compiled = (
            compile_unreadable(policy_id, revision)
            if policy is None
            else compile_policy(policy_id, policy, revision)
        )
        rows.extend(compiled.rows)
    SqlAlchemyAdapter(connection).save_policy(model)
    return version


def layout_number(layout: str | None) -> int:
    return int(layout) if layout is not None and layout.isdigit() else 0


def oldest_stored_layout(connection: Connection) -> int | None:
    """The oldest row layout in ``casbin_rule`` (None: no rows)."""
    layouts = connection.execute(select(RULES.c.v5).where(RULES.c.ptype == PTYPE).distinct()).scalars()
    found = [layout_number(layout) for layout in layouts]
    return min(found) if found else None


def current_layout() -> int:
    return layout_number(LAYOUT)
