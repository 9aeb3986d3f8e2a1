"""Tables of contract negotiation: negotiations (both roles), agreements, and the policy engine's rules.

A negotiation row is a persisted state machine: its state, the last offer,
the message it still has to send (the outbox: one pending message, its
attempts and when to try next) and a lease, so that one replica at a time
works on it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Text
from sqlmodel import Field, SQLModel


class NegotiationRow(SQLModel, table=True):
    __tablename__ = "contract_negotiation"
    __table_args__ = (
        Index("ix_contract_negotiation_provider_pid", "provider_pid"),
        Index("ix_contract_negotiation_consumer_pid", "consumer_pid"),
        Index("ix_contract_negotiation_due", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=64)  # the local id the Management API uses
    role: str = Field(max_length=16)  # "provider" or "consumer": our side
    provider_pid: str | None = Field(default=None, max_length=256)
    consumer_pid: str | None = Field(default=None, max_length=256)
    counter_party_did: str = Field(max_length=512, index=True)
    counter_party_address: str = Field(max_length=2048)  # their DSP base URL or callback address
    state: str = Field(max_length=16, index=True)
    asset_id: str | None = Field(default=None, max_length=256)
    contract_definition_id: str | None = Field(default=None, max_length=256)
    offer: str = Field(sa_column=Column(Text, nullable=False))  # the current offer, DSP form (JSON)
    agreement_id: str | None = Field(default=None, max_length=256)
    approval: str = Field(default="automatic", max_length=16)
    error_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The outbox: the one message this side still has to deliver, and its retry schedule.
    pending_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # The lease: which replica works on the row, until when (epoch ms).
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class AgreementRow(SQLModel, table=True):
    __tablename__ = "contract_agreement"

    id: str = Field(primary_key=True, max_length=256)
    negotiation_id: str = Field(max_length=64, index=True)
    provider_did: str = Field(max_length=512, index=True)
    consumer_did: str = Field(max_length=512, index=True)
    asset_id: str = Field(max_length=256, index=True)
    agreement: str = Field(sa_column=Column(Text, nullable=False))  # the Agreement object as signed (JSON)
    signed_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    provider_signature: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    consumer_signature: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class CasbinRuleRow(SQLModel, table=True):
    """Casbin's policy rows (the layout of Casbin's SQL adapters: ptype and v0..v5)."""

    __tablename__ = "casbin_rule"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    ptype: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    v0: str | None = Field(default=None, sa_column=Column(String(512), nullable=True, index=True))
    v1: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    v2: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    v3: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    v4: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    v5: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))


class PolicyEngineVersionRow(SQLModel, table=True):
    """A counter bumped whenever the compiled rules change, so replicas know to reload."""

    __tablename__ = "policy_engine_version"

    name: str = Field(primary_key=True, max_length=64)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
