"""What a provider offers to one requester: datasets, each with the offers it may see.

An asset is offered where a contract definition selects it and that
definition's access policy admits the requester (decided by the policy
engine); each such definition contributes one offer, carrying its contract
policy. Everything happens in SQL, one page at a time: memory does not grow
with the number of assets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import AssetRecord, record_of
from catalog.contract_definitions import ContractDefinitionRecord, all_contract_definitions
from catalog.models import Asset
from catalog.queryspec import A_ID, Criterion, asset_conditions, selector_condition
from policies.decision import Decision, RequestContext
from policies.definitions import PolicyDefinitionRecord, get_policy_definition
from policies.engine import PolicyEngine


@dataclass(frozen=True)
class Offer:
    contract_definition: ContractDefinitionRecord
    contract_policy: PolicyDefinitionRecord


@dataclass(frozen=True)
class OfferedDataset:
    asset: AssetRecord
    offers: tuple[Offer, ...]


@dataclass(frozen=True)
class CatalogPage:
    datasets: tuple[OfferedDataset, ...]
    has_more: bool


@dataclass(frozen=True)
class AccessOutcome:
    """Per contract definition: admitted or not, and why (for the operator's explain view)."""

    contract_definition: ContractDefinitionRecord
    decision: Decision


class Offering:
    """The offers visible to one requester, computed once per request."""

    def __init__(self, session: Session, context: RequestContext, engine: PolicyEngine) -> None:
        self._session = session
        self._policies: dict[str, PolicyDefinitionRecord | None] = {}
        self.outcomes: list[AccessOutcome] = []
        self.admitted: list[tuple[ContractDefinitionRecord, PolicyDefinitionRecord]] = []
        access_decisions: dict[str, Decision] = {}
        for definition in all_contract_definitions(session):
            access_id = definition.access_policy_id
            if access_id not in access_decisions:  # an unknown id is denied by the engine too
                access_decisions[access_id] = engine.decide(access_id, context)
            decision = access_decisions[access_id]
            contract = self._policy(definition.contract_policy_id)
            if contract is None:
                # A definition whose contract policy is gone offers nothing: fail closed.
                missing = definition.contract_policy_id
                decision = Decision(False, (f"policy definition {missing} does not exist",))
            self.outcomes.append(AccessOutcome(definition, decision))
            if decision.allowed and contract is not None:
                self.admitted.append((definition, contract))

    def _policy(self, policy_id: str) -> PolicyDefinitionRecord | None:
        if policy_id not in self._policies:
            self._policies[policy_id] = get_policy_definition(self._session, policy_id)
        return self._policies[policy_id]

    def _offers_for(self, assets: Sequence[Asset]) -> dict[str, list[Offer]]:
        ids = [a.id for a in assets]
        offers: dict[str, list[Offer]] = {asset_id: [] for asset_id in ids}
        if not ids:
            return offers
        for definition, contract in self.admitted:
            condition = selector_condition([definition.assets_selector])
            selected = self._session.scalars(select(A_ID).where(A_ID.in_(ids), condition))
            for asset_id in selected:
                offers[asset_id].append(Offer(definition, contract))
        return offers

    def page(self, criteria: Sequence[Criterion], offset: int, limit: int) -> CatalogPage:
        if not self.admitted:
            return CatalogPage((), False)
        statement = (
            select(Asset)
            .where(
                selector_condition([d.assets_selector for d, _ in self.admitted]), *asset_conditions(criteria)
            )
            .order_by(A_ID)
            .offset(offset)
            .limit(limit + 1)
        )
        rows = list(self._session.scalars(statement))
        has_more = len(rows) > limit
        rows = rows[:limit]
        offers = self._offers_for(rows)
        datasets = tuple(
            OfferedDataset(record_of(row), tuple(offers[row.id])) for row in rows if offers[row.id]
        )
        return CatalogPage(datasets, has_more)

    def dataset(self, asset_id: str) -> OfferedDataset | None:
        row = self._session.get(Asset, asset_id)
        if row is None:
            return None
        offers = self._offers_for([row])[row.id]
        return OfferedDataset(record_of(row), tuple(offers)) if offers else None
