"""The policy engine: ODRL policy definitions compiled to Casbin, decided by Casbin, explained in words.

One ``PolicyEngine`` per process (``ServiceCore.policy_engine``) answers
``decide(policy_id, context, action)`` for the catalog (access policies),
negotiation (contract policies) and usage. The boolean comes from Casbin's
``enforce`` over the policy's compiled rows (``policies.compiler``); the
reasons from ``policies.decision``: the admitting rule, or, when denied, each
rule and constraint that failed. Anything unexpected denies with the reason
"policy engine error" and is logged without the request's attributes.

Rows live in ``casbin_rule`` (``policies.rule_store``), written with each
definition in its transaction. A replica checks ``policy_engine_version`` at
most every ``check_interval`` seconds and reloads only the policies whose
revision changed; ``compile``/``remove`` apply a change made through this
process at once. At start-up the rows are recompiled from
``policy_definition`` when they are missing, stale or of an older layout.

Casbin's own logging is switched off: it logs every request with all its
attributes, which here include personal data.
"""

from __future__ import annotations

import ast
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import casbin
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from catalog.models import PolicyDefinition
from policies import rule_store
from policies.casbin_adapter import SqlAlchemyAdapter
from policies.compiler import (
    LAYOUT,
    MATCHER_FUNCTION,
    CompiledPolicy,
    CompileError,
    Condition,
    compile_policy,
    compile_unreadable,
)
from policies.decision import Decision, RequestContext, RuleCheck, admission, refusal, rule_checks
from policies.definitions import PolicyDefinitionRecord, stored_policies
from policies.rule_index import PolicyRowIndex
from runtime.logging import get_logger

ENGINE_ERROR = "policy engine error"
MISMATCH = "has stored rules that do not match it (a restart recompiles them)"
RETIRE_AFTER_SECONDS = 10.0  # old revisions' conditions outlive any decision that may still use them
CASBIN_LOGGERS = ("casbin", "casbin.enforcer", "casbin.policy", "casbin.role")

log = get_logger("tessera.policy_engine")


def silence_casbin() -> None:
    """Nothing Casbin logs may reach our logs: it would log requests with their attributes."""
    for name in CASBIN_LOGGERS:
        logger = logging.getLogger(name)
        logger.disabled = True
        logger.setLevel(logging.CRITICAL + 1)
    root = logging.getLogger("casbin")
    root.propagate = False  # whatever a future casbin.* logger emits stops here
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())


silence_casbin()


class _Disagreement(RuntimeError):
    """Casbin and the explaining checks disagree: a bug or a torn update, so deny."""


class _CallMatcher:
    """A matcher that is one function call on request and policy tokens, evaluated as that call.

    Casbin hands each row's tokens to ``eval(names)``; pycasbin's general
    evaluator walks the expression's syntax tree on every row, which cost about
    two thirds of a decision. Our matcher (``CASBIN_MODEL``) is a single call of
    a registered function on bare tokens, so the call is made directly. Any other
    shape keeps pycasbin's evaluator (``call_matcher`` returns None).
    """

    __slots__ = ("_arguments", "_function")

    def __init__(self, function: Callable[..., Any], arguments: tuple[str, ...]) -> None:
        self._function = function
        self._arguments = arguments

    def eval(self, names: dict[str, Any]) -> Any:
        return self._function(*[names[argument] for argument in self._arguments])


def call_matcher(expression: str, functions: dict[str, Any] | None) -> _CallMatcher | None:
    """A ``_CallMatcher`` for ``f(a, b, ...)`` with ``f`` registered and every argument a token."""
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not (
        isinstance(tree, ast.Call)
        and isinstance(tree.func, ast.Name)
        and not tree.keywords
        and all(isinstance(argument, ast.Name) for argument in tree.args)
    ):
        return None
    function = (functions or {}).get(tree.func.id)
    if not callable(function):
        return None
    return _CallMatcher(function, tuple(cast(ast.Name, argument).id for argument in tree.args))


class _Enforcer(casbin.Enforcer):  # type: ignore[misc]
    """Casbin's enforcer, parsing its matcher once per thread rather than on every request.

    pycasbin builds a new expression evaluator (``ast.parse``) in each
    ``enforce``; an evaluator keeps the names of the request it evaluates, so
    one is kept per thread. A matcher that is a single call is evaluated as
    that call (``_CallMatcher``).
    """

    def __init__(self, model: Any) -> None:
        self._expressions = threading.local()
        super().__init__(model, None, enable_log=False)

    def _get_expression(self, expr: str, functions: Any = None) -> Any:
        cache: dict[str, Any] = self._expressions.__dict__
        expression = cache.get(expr)
        if expression is None:
            expression = call_matcher(expr, functions) or casbin.Enforcer._get_expression(expr, functions)
            cache[expr] = expression
        return expression


@dataclass(frozen=True)
class Explanation:
    """The operator's "why": the decision and every rule, checked constraint by constraint."""

    policy_id: str
    action: str
    decision: Decision
    rules: tuple[RuleCheck, ...]


class PolicyEngine:
    def __init__(
        self,
        engine: Engine,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        silence_casbin()
        self._db = engine
        self._interval = check_interval
        self._clock = clock
        self._index = PolicyRowIndex()
        model = rule_store.new_model()
        model.model["p"][rule_store.PTYPE].policy = self._index
        self._enforcer = _Enforcer(model)
        self._enforcer.add_function(MATCHER_FUNCTION, self._holds)
        self._policies: dict[str, CompiledPolicy] = {}
        self._conditions: dict[str, Condition] = {}
        self._retired: list[tuple[float, list[str]]] = []
        self._version = -1
        self._lock = threading.Lock()  # one loader at a time; decisions never wait for it
        self._next_check = 0.0
        self._ensure_compiled()
        self.refresh()
        self._next_check = clock() + check_interval

    # ------------------------------------------------------------ deciding

    def decide(self, policy_id: str, context: RequestContext, action: str = "use") -> Decision:
        """Does policy ``policy_id`` admit ``context`` for ``action``, and why (not)? Fails closed."""
        try:
            self._maybe_refresh()
            for _attempt in range(2):
                entry = self._policies.get(policy_id)
                allowed = self._enforce(policy_id, action, context)
                if self._policies.get(policy_id) is entry:  # not swapped while deciding
                    return self._explained(policy_id, entry, context, action, allowed)
            raise _Disagreement("the policy changed twice during one decision")
        except Exception as exc:
            log.error("policy engine error", policy_id=policy_id, action=action, error=type(exc).__name__)
            return Decision(False, (ENGINE_ERROR,))

    def explain(self, policy_id: str, context: RequestContext, action: str = "use") -> Explanation | None:
        """The decision and each rule's constraints checked; None for an unknown policy."""
        decision = self.decide(policy_id, context, action)
        entry = self._policies.get(policy_id)
        if entry is None:
            return None
        rules = rule_checks(entry.policy, context, (action,)) if entry.policy is not None else []
        return Explanation(policy_id, action, decision, tuple(rules))

    def knows(self, policy_id: str) -> bool:
        return policy_id in self._policies

    def _holds(
        self, pol: str, act: str, ref: str, asked_pol: str, asked_act: str, context: RequestContext
    ) -> bool:
        """The matcher (``CASBIN_MODEL``): does row (pol, act, ref) match the request and its rule hold?"""
        return pol == asked_pol and (act == asked_act or act == "") and self._conditions[ref](context)

    def _enforce(self, policy_id: str, action: str, context: RequestContext) -> bool:
        index = self._index
        index.select(policy_id)  # Casbin sees only this policy's rows, in this thread
        try:
            return bool(self._enforcer.enforce(policy_id, action, context))
        finally:
            index.clear_selection()

    def _explained(
        self,
        policy_id: str,
        entry: CompiledPolicy | None,
        context: RequestContext,
        action: str,
        allowed: bool,
    ) -> Decision:
        if entry is None or entry.policy is None:
            if allowed:
                raise _Disagreement("rows admit for a policy that is unknown or unreadable")
            if entry is None:
                return Decision(False, (f"policy definition {policy_id} does not exist",))
            return Decision(False, (f"policy definition {policy_id} {entry.problem}: it denies everything",))
        conditions = entry.rule_conditions
        wanted = frozenset((action,))
        # The decision procedure of policies.decision on the compiled conditions: it must agree with
        # Casbin, and names the admitting rule; a refusal is then explained constraint by constraint.
        reasons = admission(entry.policy, wanted, lambda rule: conditions[id(rule)](context))
        if allowed != (reasons is not None):
            raise _Disagreement("casbin and the decision procedure disagree")
        if reasons is not None:
            return Decision(True, reasons)
        policy = entry.policy

        def explain() -> tuple[str, ...]:  # when the reasons are read (``Decision``): fails closed too
            try:
                return refusal(policy, context, wanted)
            except Exception as exc:
                log.error("policy engine error", policy_id=policy_id, action=action, error=type(exc).__name__)
                return (ENGINE_ERROR,)

        return Decision(False, explain=explain)

    # ------------------------------------------------------------ keeping up with the database

    def compile(self, record: PolicyDefinitionRecord) -> None:
        """Apply a definition just stored (``policies.definitions`` wrote its rows) to this replica now."""
        self._reload_now([record.id])

    def remove(self, policy_id: str) -> None:
        """Apply a deletion just committed to this replica now."""
        self._reload_now([policy_id])

    def _reload_now(self, policy_ids: list[str]) -> None:
        try:
            with self._lock, self._snapshot() as connection, connection.begin():
                loaded = self._load(connection, policy_ids)
                gone = [pid for pid in policy_ids if pid not in {c.policy_id for c in loaded}]
                self._install(loaded, gone, limit=None)
        except SQLAlchemyError as exc:
            log.warning("policy engine reload failed", error=type(exc).__name__)
            self._next_check = 0.0  # the periodic check catches up

    def refresh(self) -> None:
        """Bring this replica up to the database: reload what changed since the version it holds."""
        with self._lock:
            self._refresh_locked()

    def _maybe_refresh(self) -> None:
        now = self._clock()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self._interval
            self._refresh_locked()
        except Exception as exc:
            # Keep deciding on what is loaded (stale by an interval or two); try again next interval.
            log.warning("policy engine version check failed", error=type(exc).__name__)
        finally:
            self._lock.release()

    def _refresh_locked(self) -> None:
        with self._snapshot() as connection, connection.begin():
            version = rule_store.read_version(connection)
            if version == self._version:
                return
            stored = rule_store.stored_revisions(connection)
            changed = [pid for pid, rev in stored.items() if self._revision(pid) != rev]
            gone = [pid for pid in self._policies if pid not in stored]
            loaded = self._load(connection, changed)
        self._install(loaded, gone, limit=version)
        self._version = version

    def _revision(self, policy_id: str) -> str | None:
        entry = self._policies.get(policy_id)
        return entry.revision if entry is not None else None

    def _snapshot(self) -> Connection:
        """A connection whose transaction reads one consistent state (rules and definitions together)."""
        connection = self._db.connect()
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        return connection

    def _load(self, connection: Connection, policy_ids: list[str]) -> list[CompiledPolicy]:
        """The stored rows of these policies (through the adapter), checked against their definitions."""
        if not policy_ids:
            return []
        staging = rule_store.new_model()
        SqlAlchemyAdapter(connection).load_filtered_policy(staging, policy_ids)
        rows: dict[str, list[list[str]]] = defaultdict(list)
        for row in staging.model["p"][rule_store.PTYPE].policy:
            rows[row[0]].append(row)
        policies = stored_policies(connection, list(rows))
        loaded = []
        for policy_id, stored in rows.items():
            revision = stored[0][4] if len(stored[0]) > 4 else ""
            policy = policies.get(policy_id)
            try:
                compiled = (
                    compile_unreadable(policy_id, revision)
                    if policy is None
                    else compile_policy(policy_id, policy, revision)
                )
            except CompileError as exc:  # one bad policy must not keep the others from loading
                log.warning("policy cannot be compiled", policy_id=policy_id, error=str(exc))
                compiled = compile_unreadable(policy_id, revision, "cannot be compiled")
            ours = all(len(r) > 5 and r[5] == LAYOUT for r in stored)
            if ours and sorted(compiled.rows) != sorted(stored):
                # Same compiler, other rows: edited by hand or torn. Deny until recompiled (a restart).
                log.warning("stored policy rules do not match their definition", policy_id=policy_id)
                compiled = compile_unreadable(policy_id, revision, MISMATCH)
            # Rows of another layout (a newer replica during a rolling upgrade): this replica
            # enforces what its own compiler makes of the definition.
            loaded.append(compiled)
        return loaded

    def _install(self, loaded: list[CompiledPolicy], gone: list[str], limit: int | None) -> None:
        """Swap policies in (never an older revision for a newer one); drop those gone (up to ``limit``)."""
        now = self._clock()
        self._purge_retired(now)
        for compiled in loaded:
            old = self._policies.get(compiled.policy_id)
            if old is not None and _number(old.revision) > _number(compiled.revision):
                continue
            self._conditions.update(compiled.conditions)
            self._index.replace(compiled.policy_id, compiled.rows)
            self._policies[compiled.policy_id] = compiled
            if old is not None:
                self._retire(now, [ref for ref in old.conditions if ref not in compiled.conditions])
        for policy_id in gone:
            old = self._policies.get(policy_id)
            if old is None or (limit is not None and _number(old.revision) > limit):
                continue  # compiled here after the state being applied was read
            self._index.drop(policy_id)
            del self._policies[policy_id]
            self._retire(now, list(old.conditions))

    def _retire(self, now: float, refs: list[str]) -> None:
        if refs:
            self._retired.append((now, refs))

    def _purge_retired(self, now: float) -> None:
        while self._retired and now - self._retired[0][0] > RETIRE_AFTER_SECONDS:
            for ref in self._retired.pop(0)[1]:
                self._conditions.pop(ref, None)

    def _ensure_compiled(self) -> None:
        """Recompile every policy when the stored rows are missing, stale or of an older layout.

        A newer layout is left alone: the newer replicas wrote it; this one compiles in memory.
        """
        with self._db.begin() as connection:
            if self._up_to_date(connection):
                return
            rule_store.bump_version(connection)  # replicas starting together take turns here
            if self._up_to_date(connection):
                return
            policies = stored_policies(connection)
            rule_store.recompile_all(connection, sorted(policies.items()))
        log.info("policy rules recompiled", policies=len(policies))

    @staticmethod
    def _up_to_date(connection: Connection) -> bool:
        oldest = rule_store.oldest_stored_layout(connection)
        if oldest is not None and oldest < rule_store.current_layout():
            return False  # rows a newer layout exists for (rows of a newer one are left to newer replicas)
        table = PolicyDefinition.__table__  # type: ignore[attr-defined]
        defined = set(connection.execute(select(table.c.id)).scalars())
        return defined == set(rule_store.stored_revisions(connection))

    # ------------------------------------------------------------ for tests and the benchmark

    @property
    def version(self) -> int:
        return self._version

    def rows_of(self, policy_id: str) -> tuple[list[str], ...]:
        return self._index.rows_of(policy_id)


def _number(revision: str) -> int:
    return int(revision) if revision.isdigit() else -1
