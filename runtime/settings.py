"""Settings of one participant: its TOML file, overridden by ``TESSERA_*`` variables.

A participant directory holds ``tessera.toml``; every field below can also
come from the environment (``TESSERA_PORT``, ``TESSERA_DATABASE_URL``...),
which wins over the file. Errors become a ``StartupError`` naming the setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from identity.did import did_from_url
from identity.errors import DidError
from runtime.errors import StartupError

CONFIG_FILE = "tessera.toml"
PRIVATE_KEY_FILE = "keys/private-key.pem"
API_KEY_FILE = "management-api-key"
DATABASE_FILE = "tessera.db"
DSP_PATH = "/dsp/2025-1"
S = TypeVar("S", bound="ParticipantSettings")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Environment(EnvSettingsSource):
    """``TESSERA_*`` variables, except ``data_dir``: the directory is always the one given (--dir)."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        values.pop("data_dir", None)
        return values


class ParticipantSettings(BaseSettings):
    """What every participant service (connector or consent service) is configured with."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", extra="forbid", validate_default=True)

    data_dir: Path
    name: str
    kind: Literal["connector", "consent"] = "connector"
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    public_url: str
    database_url: str | None = None
    private_key_file: Path | None = None
    management_api_key: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    clock_skew_seconds: int = Field(default=30, ge=0, le=300)
    token_lifetime_seconds: int = Field(default=120, ge=1, le=300)
    # How often a connector crawls the members' catalogs into its federated catalog (0: never).
    catalog_crawl_interval_seconds: int = Field(default=300, ge=0, le=86_400)
    # How often a connector witnesses (checks and cosigns) the members' transfer logs (0: never).
    log_witness_interval_seconds: int = Field(default=300, ge=0, le=86_400)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file's values arrive as init arguments; the environment wins over them.
        return (_Environment(settings_cls), init_settings)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        value = value.rstrip("/")
        try:
            did_from_url(value)
        except DidError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith(("postgres://", "postgresql://")):
            # psycopg 3 is the driver we ship; name it so SQLAlchemy does not look for psycopg2.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return value

    @property
    def did(self) -> str:
        return did_from_url(self.public_url)

    @property
    def dsp_url(self) -> str:
        return self.public_url + DSP_PATH

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / DATABASE_FILE}"

    @property
    def resolved_private_key_file(self) -> Path:
        path = self.private_key_file or Path(PRIVATE_KEY_FILE)
        return path if path.is_absolute() else self.data_dir / path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise StartupError(
            f"{path} does not exist: create the participant with 'tessera init' or pass --dir"
        ) from None
    except OSError as exc:
        raise StartupError(f"{path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"{path} is not valid TOML: {exc}") from None


def _describe(error: ValidationError, config_path: Path) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    if first["type"] == "extra_forbidden":
        return f"unknown setting '{field}' in {config_path}"
    if first["type"] == "missing":
        return f"setting '{field}' is missing (set it in {config_path} or TESSERA_{field.upper()})"
    reason = first["msg"].removeprefix("Value error, ")
    return f"setting '{field}' is invalid ({config_path} or TESSERA_{field.upper()}): {reason}"


def kind_of(data_dir: Path) -> str:
    """Which kind of participant ``data_dir`` holds ('connector' or 'consent'); TESSERA_KIND wins."""
    kind = os.environ.get("TESSERA_KIND") or _read_toml(data_dir.resolve() / CONFIG_FILE).get("kind")
    return kind if isinstance(kind, str) else "connector"


def load_settings(settings_cls: type[S], data_dir: Path) -> S:
    """Load the settings of the participant in ``data_dir``; StartupError names any bad setting."""
    data_dir = data_dir.resolve()
    config_path = data_dir / CONFIG_FILE
    values = _read_toml(config_path)
    if "data_dir" in values:
        raise StartupError(f"unknown setting 'data_dir' in {config_path}: the directory is given by --dir")
    try:
        settings = settings_cls(data_dir=data_dir, **values)
    except ValidationError as exc:
        raise StartupError(_describe(exc, config_path)) from None
    if settings.management_api_key is None:
        settings.management_api_key = _read_api_key(data_dir / API_KEY_FILE)
    return settings


def _read_api_key(path: Path) -> SecretStr:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise StartupError(
            f"setting 'management_api_key' is missing: no {path} and no TESSERA_MANAGEMENT_API_KEY"
        ) from None
    except OSError as exc:
        raise StartupError(f"{path} cannot be read: {exc.strerror}") from None
    if len(key) < 16:
        raise StartupError(f"setting 'management_api_key' in {path} is shorter than 16 characters")
    return SecretStr(key)
