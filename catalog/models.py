"""Tables of the catalog: assets, policy and contract definitions (what we publish), and the
federated catalog cache (what other members publish, as our crawler last saw it).

Asset properties are stored as expanded JSON-LD (the canonical form), and
each scalar property value is also a row of ``asset_property``: QuerySpec
criteria and contract-definition selectors become indexed ``EXISTS``
sub-queries that work the same on SQLite and PostgreSQL, and a catalog page
never loads more than the page.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field, SQLModel


class Asset(SQLModel, table=True):
    __tablename__ = "asset"

    id: str = Field(primary_key=True, max_length=256)
    properties: str = Field(sa_column=Column(Text, nullable=False))
    private_properties: str = Field(sa_column=Column(Text, nullable=False))
    data_address: str = Field(sa_column=Column(Text, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    # DCAT metadata, denormalised from ``properties`` for listing and search.
    title: str | None = Field(default=None, max_length=512)
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    publisher: str | None = Field(default=None, max_length=512)
    license: str | None = Field(default=None, max_length=1024)
    personal: bool = Field(default=False)


class AssetProperty(SQLModel, table=True):
    """One scalar value of one asset property (lists give one row per element)."""

    __tablename__ = "asset_property"
    __table_args__ = (Index("ix_asset_property_key_value", "key", "value"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    asset_id: str = Field(
        sa_column=Column(String(256), ForeignKey("asset.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    key: str = Field(max_length=512)
    value: str = Field(max_length=512)
    number: float | None = Field(default=None, sa_column=Column(Float, nullable=True))


class PolicyDefinition(SQLModel, table=True):
    __tablename__ = "policy_definition"

    id: str = Field(primary_key=True, max_length=256)
    policy: str = Field(sa_column=Column(Text, nullable=False))  # expanded ODRL policy node
    private_properties: str = Field(sa_column=Column(Text, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class ContractDefinition(SQLModel, table=True):
    __tablename__ = "contract_definition"

    id: str = Field(primary_key=True, max_length=256)
    access_policy_id: str = Field(max_length=256, index=True)
    contract_policy_id: str = Field(max_length=256, index=True)
    assets_selector: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of criteria
    private_properties: str = Field(sa_column=Column(Text, nullable=False))
    negotiation_approval: str = Field(default="automatic", max_length=16)
    transfer_approval: str = Field(default="automatic", max_length=16)
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


# ---------------------------------------------------------------- the federated catalog (consumer side)


class CachedDatasetRow(SQLModel, table=True):
    """One dataset of another member's catalog, as our last crawl of it saw it.

    ``keywords`` and ``themes`` hold one value per line between a leading and a
    trailing newline, so a theme is matched exactly with a plain substring
    test; ``search_text`` is title, description and keywords case-folded (in
    Python, so SQLite and PostgreSQL search alike) and ``title_key`` the
    case-folded title, for ordering.
    """

    __tablename__ = "cached_dataset"

    participant_did: str = Field(primary_key=True, max_length=512)
    dataset_id: str = Field(primary_key=True, max_length=256)
    title: str | None = Field(default=None, max_length=512)
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    keywords: str = Field(sa_column=Column(Text, nullable=False))
    publisher: str | None = Field(default=None, max_length=512, index=True)
    themes: str = Field(sa_column=Column(Text, nullable=False))
    license: str | None = Field(default=None, max_length=1024)
    personal: bool = Field(default=False)
    media_type: str | None = Field(default=None, max_length=256)
    raw: str = Field(sa_column=Column(Text, nullable=False))  # the dataset as received, JSON
    fetched_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    search_text: str = Field(sa_column=Column(Text, nullable=False))
    title_key: str = Field(max_length=512, index=True)


class CrawlStatusRow(SQLModel, table=True):
    """How the last crawl of one member's catalog went."""

    __tablename__ = "crawl_status"

    participant_did: str = Field(primary_key=True, max_length=512)
    last_attempt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_success: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    dataset_count: int = Field(default=0)
