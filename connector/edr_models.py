"""The table of EDR negotiations: negotiations that start a pull transfer by themselves.

``POST /management/v3/edrs`` negotiates like ``/contractnegotiations`` and
records here what the transfer it starts on FINALIZED will need (the purpose
to declare, EDC's callback addresses). The EDR itself (the data address and
its token) lives in the consumer's transfer row (``transfer_process.data_address``);
this table only links the two and says why, if the transfer could not start.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Text
from sqlmodel import Field, SQLModel

NEGOTIATING = "NEGOTIATING"  # waiting for the negotiation to finish
TRANSFER_REQUESTED = "TRANSFER_REQUESTED"  # the pull transfer is asked for (see transfer_id)
FAILED = "FAILED"  # the negotiation ended without agreement, or the transfer was refused here


class EdrNegotiationRow(SQLModel, table=True):
    __tablename__ = "edr_negotiation"

    negotiation_id: str = Field(primary_key=True, max_length=64)  # the consumer's contract_negotiation.id
    state: str = Field(max_length=32, index=True)
    purpose: str | None = Field(default=None, max_length=512)  # declared in the transfer request
    callback_addresses: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # EDC's, JSON
    transfer_id: str | None = Field(default=None, max_length=64)  # the consumer's transfer_process.id
    error_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: int = Field(sa_column=Column(BigInteger, nullable=False))
