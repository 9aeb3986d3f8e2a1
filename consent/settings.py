"""The consent service's settings (same sources as a connector's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from runtime.settings import ParticipantSettings, load_settings

CONSENT_API_PATH = "/api/v1"


class ConsentSettings(ParticipantSettings):
    kind: Literal["consent"] = "consent"

    @property
    def api_url(self) -> str:
        return self.public_url + CONSENT_API_PATH


def load_consent_settings(data_dir: Path) -> ConsentSettings:
    return load_settings(ConsentSettings, data_dir)
