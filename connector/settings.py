"""A connector's settings (see ``runtime.settings`` for where they come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from runtime.settings import ParticipantSettings, load_settings

LOCAL_HTTP = ("http://127.0.0.1", "http://localhost", "http://[::1]")


class ConnectorSettings(ParticipantSettings):
    kind: Literal["connector"] = "connector"
    # How long a pull transfer's data token lives (the consumer refreshes it before then).
    data_token_lifetime_seconds: int = Field(default=600, ge=5, le=86_400)
    # The citizen consent service personal records are released by (its public URL and its DID,
    # which must be on the trust list). Both or neither; neither: nothing personal is released.
    consent_service_url: str | None = None
    consent_service_did: str | None = Field(default=None, pattern=r"^did:web:[^\s]{1,500}$")
    # Plain http:// to a consent service on another host: only for a private network the operator
    # trusts (containers on one host, say). Requests stay peer-authenticated either way.
    consent_service_plain_http: bool = False

    @field_validator("consent_service_url")
    @classmethod
    def _check_consent_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consent_complete(self) -> ConnectorSettings:
        if (self.consent_service_url is None) != (self.consent_service_did is None):
            raise ValueError("consent_service_url and consent_service_did go together: set both or neither")
        url = self.consent_service_url
        if (
            url
            and url.startswith("http://")
            and not url.startswith(LOCAL_HTTP)
            and not self.consent_service_plain_http
        ):
            raise ValueError(
                "consent_service_url must be an https:// URL (plain http only on this machine, or on a "
                "private network with consent_service_plain_http = true)"
            )
        return self


def load_connector_settings(data_dir: Path) -> ConnectorSettings:
    return load_settings(ConnectorSettings, data_dir)
