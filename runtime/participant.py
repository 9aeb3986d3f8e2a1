"""Creating a participant directory: keys, configuration, management API key.

The directory is built under a temporary name next to its destination and
renamed into place at the end, so a failure never leaves a half-initialised
participant behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from identity.keys import generate_private_key, public_jwk, write_private_key
from runtime.errors import StartupError
from runtime.settings import API_KEY_FILE, CONFIG_FILE, PRIVATE_KEY_FILE, ParticipantSettings

PUBLIC_KEY_FILE = "keys/public-key.jwk"


@dataclass(frozen=True)
class NewParticipant:
    data_dir: Path
    did: str
    public_url: str
    management_api_key: str


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def render_config(name: str, kind: str, host: str, port: int, public_url: str) -> str:
    return (
        "# Tessera participant settings. Every value can be overridden by an environment\n"
        "# variable TESSERA_<NAME>, e.g. TESSERA_DATABASE_URL=postgresql://user@host/db.\n"
        f"name = {_toml_string(name)}\n"
        f"kind = {_toml_string(kind)}\n"
        f"host = {_toml_string(host)}\n"
        f"port = {port}\n"
        f"public_url = {_toml_string(public_url)}\n"
        '# database_url = "postgresql://tessera@127.0.0.1:5432/tessera"  # default: SQLite in this directory\n'
    )


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def init_participant(
    data_dir: Path,
    name: str,
    port: int,
    *,
    kind: str = "connector",
    host: str = "127.0.0.1",
    public_url: str | None = None,
) -> NewParticipant:
    data_dir = data_dir.resolve()
    if (data_dir / CONFIG_FILE).exists():
        raise StartupError(f"{data_dir} already holds a participant ({CONFIG_FILE} exists)")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise StartupError(f"{data_dir} exists and is not an empty directory")
    public_url = (public_url or f"http://{host}:{port}").rstrip("/")
    try:
        # Validate everything the config file will say before writing any of it.
        settings = ParticipantSettings(
            data_dir=data_dir, name=name, kind=kind, host=host, port=port, public_url=public_url
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        option = str(first["loc"][0]).replace("_", "-")  # the CLI spells it --public-url
        raise StartupError(f"--{option} is invalid: {first['msg'].removeprefix('Value error, ')}") from None

    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.init-", dir=data_dir.parent))
    except OSError as exc:
        raise StartupError(f"cannot create {data_dir}: {exc.strerror or exc}") from None
    try:
        staging.chmod(0o700)
        key = generate_private_key()
        write_private_key(key, staging / PRIVATE_KEY_FILE)
        (staging / PUBLIC_KEY_FILE).write_text(json.dumps(public_jwk(key.public_key()), indent=2) + "\n")
        api_key = secrets.token_urlsafe(32)
        _write_secret(staging / API_KEY_FILE, api_key + "\n")
        (staging / CONFIG_FILE).write_text(
            render_config(name, kind, host, port, settings.public_url), encoding="utf-8"
        )
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        staging.rename(data_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StartupError(f"cannot create {data_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return NewParticipant(
        data_dir=data_dir, did=settings.did, public_url=settings.public_url, management_api_key=api_key
    )
