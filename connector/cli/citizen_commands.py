"""``tessera consent citizen``: citizen accounts of a consent service (add, list, password, link)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from connector.cli.common import DirOption, open_database, participant_settings
from runtime.errors import StartupError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlmodel import Session

console = Console()
citizen_app = typer.Typer(help="Citizen accounts of the consent service.", no_args_is_help=True)

PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from standard input (first line) instead of generating one.",
    ),
]


@contextmanager
def _consent_database(data_dir: Path) -> Iterator[Session]:
    from sqlmodel import Session

    settings = participant_settings(data_dir)
    if settings.kind != "consent":
        raise StartupError(f"{data_dir.resolve()} is not a consent service (kind is not 'consent')")
    engine = open_database(settings)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def _password(from_stdin: bool) -> tuple[str, bool]:
    """The password to set, and whether it was generated (then it is printed)."""
    from consent.accounts import new_password

    if not from_stdin:
        return new_password(), True
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise StartupError("no password on standard input")
    return line, False


@citizen_app.command("add")
def add(
    name: Annotated[
        str, typer.Argument(help="The citizen's sign-in name (lowercase letters, digits, . _ -).")
    ],
    data_dir: DirOption = Path("."),
    password_stdin: PasswordStdinOption = False,
    display_name: Annotated[
        str, typer.Option("--display-name", help="How the pages greet the citizen.")
    ] = "",
    oidc_subject: Annotated[
        str | None,
        typer.Option(
            "--oidc-subject", help="Link to this subject ('sub') at the configured OpenID Connect provider."
        ),
    ] = None,
) -> None:
    """Create a citizen account; prints the generated password unless --password-stdin gives one."""
    from consent.accounts import AccountError, add_citizen
    from consent.settings import load_consent_settings

    password, generated = _password(password_stdin)
    issuer = None
    if oidc_subject is not None:
        issuer = load_consent_settings(data_dir).oidc_issuer
        if issuer is None:
            raise StartupError("--oidc-subject needs oidc_issuer in the consent service's settings")
    with _consent_database(data_dir) as session:
        try:
            citizen = add_citizen(
                session,
                name,
                password=password,
                display_name=display_name,
                oidc_issuer=issuer,
                oidc_subject=oidc_subject,
            )
        except AccountError as exc:
            raise StartupError(str(exc)) from None
    console.print(f"citizen {citizen.name} added ({citizen.id})", highlight=False)
    if generated:
        console.print(f"  password (shown once): {password}", highlight=False, soft_wrap=True)


@citizen_app.command("password")
def password(
    name: Annotated[str, typer.Argument(help="The citizen's sign-in name.")],
    data_dir: DirOption = Path("."),
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Set a new password for a citizen (and sign them out everywhere)."""
    from consent.accounts import AccountError, set_password
    from consent.citizen_sessions import end_all_sessions

    new, generated = _password(password_stdin)
    with _consent_database(data_dir) as session:
        try:
            citizen = set_password(session, name, new)
        except AccountError as exc:
            raise StartupError(str(exc)) from None
        end_all_sessions(session, citizen.id)
    console.print(f"citizen {citizen.name}: password changed, every session ended", highlight=False)
    if generated:
        console.print(f"  password (shown once): {new}", highlight=False, soft_wrap=True)


@citizen_app.command("list")
def list_command(data_dir: DirOption = Path(".")) -> None:
    """The citizen accounts: name, id, and how each can sign in."""
    from consent.accounts import list_citizens

    with _consent_database(data_dir) as session:
        citizens = list_citizens(session)
    for citizen in citizens:
        ways = [w for w, on in (("password", citizen.has_password), ("oidc", citizen.oidc_linked)) if on]
        typer.echo(f"{citizen.name}\t{citizen.id}\t{','.join(ways) or 'none'}")  # tab-separated, for scripts
