"""The consent service's settings (same sources as a connector's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from runtime.settings import ParticipantSettings, load_settings

CONSENT_API_PATH = "/api/v1"
LOCAL_HOSTS = ("http://127.0.0.1", "http://localhost", "http://[::1]")


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
    # Optional sign-in through an external OpenID Connect provider: all three or none.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = Field(default=None, max_length=255)
    oidc_client_secret: SecretStr | None = None
    oidc_provider_name: str = Field(default="your city account", max_length=80)

    @field_validator("oidc_issuer")
    @classmethod
    def _check_issuer(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith("https://") and not value.startswith(LOCAL_HOSTS):
            raise ValueError("must be an https:// URL (plain http only on this machine)")
        return value

    @model_validator(mode="after")
    def _oidc_complete(self) -> ConsentSettings:
        given = [self.oidc_issuer is not None, bool(self.oidc_client_id), self.oidc_client_secret is not None]
        if any(given) and not all(given):
            raise ValueError(
                "oidc_issuer, oidc_client_id and oidc_client_secret go together: set all or none"
            )
        return self

    @property
    def api_url(self) -> str:
        return self.public_url + CONSENT_API_PATH

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc_issuer is not None


def load_consent_settings(data_dir: Path) -> ConsentSettings:
    return load_settings(ConsentSettings, data_dir)
