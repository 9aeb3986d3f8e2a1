"""The consent service's settings (same sources as a connector's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from runtime.settings import ParticipantSettings, load_settings

CONSENT_API_PATH = "/api/v1"


class ConsentSettings(ParticipantSettings):
    kind: Literal["consent"] = "consent"
    # Decision requests each connector may make per second (token bucket), and the burst it may use.
    decision_rate_per_second: float = Field(default=2000.0, gt=0, le=1_000_000)
    decision_burst: int = Field(default=4000, ge=1, le=1_000_000)
    # Subjects in one decision request.
    max_decision_subjects: int = Field(default=10_000, ge=1, le=100_000)
    # How often the change feed looks for new changes.
    change_feed_poll_seconds: float = Field(default=0.1, gt=0, le=10)
    # How often given consents whose time ran out are written down as ConsentExpired (0: never).
    expiry_sweep_seconds: int = Field(default=60, ge=0, le=86_400)

    @property
    def api_url(self) -> str:
        return self.public_url + CONSENT_API_PATH


def load_consent_settings(data_dir: Path) -> ConsentSettings:
    return load_settings(ConsentSettings, data_dir)
