"""The table of transfer processes (both roles).

A transfer row is a persisted state machine like a negotiation row: its
state, what was agreed and asked for, the one message it still has to send
(the outbox) and a lease. The provider also keeps the id of the one data
token currently valid for the transfer and counts every access and byte
served; the consumer keeps the data address (its EDR) the provider sent.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Text
from sqlmodel import Field, SQLModel


class TransferRow(SQLModel, table=True):
    __tablename__ = "transfer_process"
    __table_args__ = (
        Index("ix_transfer_process_provider_pid", "provider_pid"),
        Index("ix_transfer_process_consumer_pid", "consumer_pid"),
        Index("ix_transfer_process_due", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=64)  # the local id the Management API uses
    role: str = Field(max_length=16)  # "provider" or "consumer": our side
    provider_pid: str | None = Field(default=None, max_length=256)
    consumer_pid: str | None = Field(default=None, max_length=256)
    counter_party_did: str = Field(max_length=512, index=True)
    counter_party_address: str = Field(max_length=2048)  # their DSP base URL or callback address
    state: str = Field(max_length=16, index=True)
    agreement_id: str = Field(max_length=256, index=True)
    asset_id: str = Field(max_length=256)
    transfer_type: str = Field(max_length=128)  # the DSP format, e.g. HttpData-PULL
    approval: str = Field(default="automatic", max_length=16)  # the contract definition's transferApproval
    purpose: str | None = Field(default=None, max_length=512)  # what the consumer declared
    # The consumer's push destination (a DataAddress, JSON); it may hold credentials: never logged.
    data_destination: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Consumer: the data address (EDR) the provider's start message carried, JSON with its token.
    data_address: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Provider: the jti of the one data token valid now (a refresh replaces it).
    token_id: str | None = Field(default=None, max_length=128)
    access_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    bytes_transferred: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    error_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Evidence for the transfer log (provider): the SHA-256 of the payload last served (per
    # access for a pull, the whole stream for a push), records served, the personal-data gate's
    # decisions (JSON: decisionIds, released, withheld) and the last policy decision (JSON).
    payload_sha256: str | None = Field(default=None, max_length=64)
    records: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    consent_summary: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    policy_decision: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Provider: signed statements (JSON list) the consumer has not countersigned yet.
    statements_outbox: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    callback_addresses: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # EDC's, JSON
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The outbox: the one message this side still has to deliver, and its retry schedule.
    pending_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # The lease: which replica works on the row, until when (epoch ms).
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
