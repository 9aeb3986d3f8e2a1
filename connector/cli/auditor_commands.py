"""``tessera auditor add|list|remove``: the read-only accounts of the audit pages.

The operator creates them; each has its own password (printed when generated, or read
from stdin), kept only as an argon2id hash. An auditor signs in at ``/ui/audit``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from connector.cli.common import DirOption, open_database, participant_settings
from runtime.errors import StartupError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from runtime.settings import ParticipantSettings

auditor_app = typer.Typer(
    help="Auditor accounts: read-only sign-in to the audit pages (/ui/audit).", no_args_is_help=True
)


def _connector_database(data_dir: Path) -> tuple[ParticipantSettings, Engine]:
    settings = participant_settings(data_dir)
    if settings.kind != "connector":
        raise StartupError(f"{data_dir.resolve()} is not a connector: auditors audit a connector's log")
    return settings, open_database(settings)


@auditor_app.command("add")
def add_command(
    name: Annotated[str, typer.Argument(help="The auditor's name (lower-case letters, digits, . _ -).")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin instead of generating one.")
    ] = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Give an existing auditor a new password (ends its sessions).")
    ] = False,
    data_dir: DirOption = Path("."),
) -> None:
    """Create an auditor account and print its password (or use the one given on stdin)."""
    from connector.auditor.accounts import (
        AuditorError,
        add_auditor,
        check_name,
        check_password,
        generate_password,
    )

    try:
        check_name(name)
        if password_stdin:
            password = check_password(sys.stdin.readline().rstrip("\r\n"))
        else:
            password = generate_password()
    except AuditorError as exc:
        raise StartupError(str(exc)) from None
    settings, engine = _connector_database(data_dir)
    try:
        add_auditor(engine, name, password, reset=reset)
    except AuditorError as exc:
        raise StartupError(str(exc)) from None
    finally:
        engine.dispose()
    done = "has a new password" if reset else "can sign in"
    print(f"auditor {name} {done} at {settings.public_url.rstrip('/')}/ui/audit", file=sys.stderr)
    if not password_stdin:
        print(password)


@auditor_app.command("list")
def list_command(data_dir: DirOption = Path(".")) -> None:
    """List the auditor accounts (names and when they were created; never passwords)."""
    from connector.auditor.accounts import list_auditors
    from connector.pages.render import when

    _, engine = _connector_database(data_dir)
    try:
        auditors = list_auditors(engine)
    finally:
        engine.dispose()
    if not auditors:
        print("no auditors", file=sys.stderr)
    for auditor in auditors:
        print(f"{auditor.name}\tcreated {when(auditor.created_at)}")


@auditor_app.command("remove")
def remove_command(
    name: Annotated[str, typer.Argument(help="The auditor to remove.")], data_dir: DirOption = Path(".")
) -> None:
    """Remove an auditor account; its sessions end at once."""
    from connector.auditor.accounts import AuditorError, remove_auditor

    _, engine = _connector_database(data_dir)
    try:
        remove_auditor(engine, name)
    except AuditorError as exc:
        raise StartupError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"auditor {name} removed", file=sys.stderr)
