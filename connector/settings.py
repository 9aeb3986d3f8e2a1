"""A connector's settings (see ``runtime.settings`` for where they come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from runtime.settings import ParticipantSettings, load_settings


class ConnectorSettings(ParticipantSettings):
    kind: Literal["connector"] = "connector"


def load_connector_settings(data_dir: Path) -> ConnectorSettings:
    return load_settings(ConnectorSettings, data_dir)
