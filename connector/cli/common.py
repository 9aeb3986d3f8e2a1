"""Helpers shared by CLI commands."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.settings import CONFIG_FILE, ParticipantSettings, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

DirOption = Annotated[
    Path, typer.Option("--dir", help="The participant directory (holds tessera.toml).", show_default=".")
]


def _kind_in(data_dir: Path) -> str | None:
    """The ``kind`` the configuration file names, if it can be read (load_settings reports why not)."""
    try:
        with (data_dir / CONFIG_FILE).open("rb") as handle:
            kind = tomllib.load(handle).get("kind")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return kind if isinstance(kind, str) else None


def participant_settings(data_dir: Path) -> ParticipantSettings:
    """Settings of whichever kind of participant lives in ``data_dir``, read with that kind's own
    settings class: a connector-only setting (``data_token_lifetime_seconds``) is no unknown setting."""
    from connector.settings import ConnectorSettings
    from consent.settings import ConsentSettings

    kinds: dict[str, type[ParticipantSettings]] = {"connector": ConnectorSettings, "consent": ConsentSettings}
    return load_settings(kinds.get(_kind_in(data_dir) or "", ParticipantSettings), data_dir)


def open_database(settings: ParticipantSettings) -> Engine:
    """The participant's database, migrated to the newest schema first."""
    from runtime.database import make_engine
    from runtime.service import prepare_database

    prepare_database(settings, settings.kind)
    return make_engine(settings.resolved_database_url)
