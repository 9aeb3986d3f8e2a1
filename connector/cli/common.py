"""Helpers shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.settings import ParticipantSettings, kind_of, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

DirOption = Annotated[
    Path, typer.Option("--dir", help="The participant directory (holds tessera.toml).", show_default=".")
]


def participant_settings(data_dir: Path) -> ParticipantSettings:
    """Settings of whichever kind of participant lives in ``data_dir``, read with that kind's own
    settings class: a kind's own setting (``data_token_lifetime_seconds``, ``oidc_issuer``) is no
    unknown setting."""
    kind = kind_of(data_dir)
    if kind == "consent":
        from consent.settings import load_consent_settings

        return load_consent_settings(data_dir)
    if kind == "connector":
        from connector.settings import ConnectorSettings

        return load_settings(ConnectorSettings, data_dir)
    return load_settings(ParticipantSettings, data_dir)


def open_database(settings: ParticipantSettings) -> Engine:
    """The participant's database, migrated to the newest schema first."""
    from runtime.database import make_engine
    from runtime.service import prepare_database

    prepare_database(settings, settings.kind)
    return make_engine(settings.resolved_database_url)
