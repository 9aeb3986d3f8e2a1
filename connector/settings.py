"""A connector's settings (see ``runtime.settings`` for where they come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from runtime.settings import ParticipantSettings, load_settings


class ConnectorSettings(ParticipantSettings):
    kind: Literal["connector"] = "connector"
    # How long a pull transfer's data token lives (the consumer refreshes it before then).
    data_token_lifetime_seconds: int = Field(default=600, ge=5, le=86_400)


def load_connector_settings(data_dir: Path) -> ConnectorSettings:
    return load_settings(ConnectorSettings, data_dir)
