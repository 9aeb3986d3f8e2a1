"""The demo's auditor: one account per connector, its password kept in the participant directory."""

from __future__ import annotations

import os
from pathlib import Path

from connector.auditor.accounts import add_auditor, generate_password, get_auditor
from runtime.database import make_engine
from runtime.settings import ParticipantSettings

DEMO_AUDITOR = "auditor"
PASSWORD_FILE = "auditor-password"  # noqa: S105 (a file name, not a password)


def ensure_demo_auditor(settings: ParticipantSettings) -> Path:
    """The file holding the demo auditor's password, creating the account (again) when either is missing."""
    path = settings.data_dir / PASSWORD_FILE
    engine = make_engine(settings.resolved_database_url)
    try:
        exists = get_auditor(engine, DEMO_AUDITOR) is not None
        if exists and path.is_file():
            return path
        password = generate_password()
        add_auditor(engine, DEMO_AUDITOR, password, reset=exists)
    finally:
        engine.dispose()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    return path
