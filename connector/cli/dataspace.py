"""``tessera dataspace``: the member list (trust list) of this participant."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from connector.cli.common import DirOption, open_database, participant_settings
from identity.errors import DidError, KeyFileError
from runtime.errors import StartupError

if TYPE_CHECKING:
    import httpx

# Database, HTTP and key imports happen inside the commands: `tessera --help` and every
# other command stay quick to start.

console = Console()
dataspace_app = typer.Typer(help="Members of the data space this participant trusts.", no_args_is_help=True)


def _read_jwk_file(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    except ValueError:
        raise KeyFileError(f"key file {path} is not JSON (expected a public JWK)") from None


@dataspace_app.command("add")
def add(
    data_dir: DirOption = Path("."),
    did: Annotated[str | None, typer.Option("--did", help="The member's DID.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="The member's DSP base URL.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="File with the member's public JWK.")] = None,
    did_document: Annotated[
        str | None,
        typer.Option("--did-document", help="Add from this DID document URL, pinning the key it shows now."),
    ] = None,
    membership: Annotated[
        list[str] | None,
        typer.Option(
            "--membership", help="A membership claim you vouch for (repeatable), e.g. public-authority."
        ),
    ] = None,
) -> None:
    """Add (or update) a member, from --did/--url/--key or from --did-document."""
    from sqlmodel import Session

    from identity.peer_client import fetch_did_document
    from identity.trustlist import add_member, add_member_from_document

    settings = participant_settings(data_dir)
    if did_document is not None:
        if did or url or key:
            raise StartupError("give either --did-document or --did/--url/--key, not both")
        expected, document = fetch_did_document(did_document)
        engine = open_database(settings)
        with Session(engine) as session:
            member = add_member_from_document(session, expected, document, membership or ())
    else:
        if not (did and url and key):
            raise StartupError("--did, --url and --key are all needed (or use --did-document URL)")
        jwk = _read_jwk_file(key)
        engine = open_database(settings)
        with Session(engine) as session:
            member = add_member(session, did, url, jwk, memberships=membership or ())
    engine.dispose()
    console.print(
        f"member {member.did} at {member.dsp_url} (key {member.public_jwk['x'][:12]}…, {member.source})"
    )


@dataspace_app.command("list")
def list_command(
    data_dir: DirOption = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the members this participant trusts."""
    from sqlmodel import Session

    from identity.trustlist import list_members

    engine = open_database(participant_settings(data_dir))
    with Session(engine) as session:
        members = list_members(session)
    engine.dispose()
    if as_json:
        rows = [
            {
                "did": m.did,
                "url": m.dsp_url,
                "key": m.public_jwk,
                "source": m.source,
                "memberships": list(m.memberships),
                "added": m.added_at.isoformat(),
            }
            for m in members
        ]
        print(json.dumps(rows, indent=2))
        return
    # DIDs and URLs wrap rather than being cut short: an operator must be able to read them.
    table = Table(
        Column("DID", overflow="fold"),
        Column("URL", overflow="fold"),
        "key (x)",
        "memberships",
        "source",
        "added",
    )
    for m in members:
        table.add_row(
            m.did,
            m.dsp_url,
            m.public_jwk["x"][:16] + "…",
            ", ".join(m.memberships) or "-",
            m.source,
            m.added_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@dataspace_app.command("remove")
def remove(
    did: Annotated[str, typer.Option("--did", help="The member's DID.")],
    data_dir: DirOption = Path("."),
) -> None:
    """Remove a member: its requests are refused from now on."""
    from sqlmodel import Session

    from identity.trustlist import remove_member

    engine = open_database(participant_settings(data_dir))
    with Session(engine) as session:
        removed = remove_member(session, did)
    engine.dispose()
    if not removed:
        raise StartupError(f"{did} is not a member")
    console.print(f"removed {did}")


@dataspace_app.command("ping")
def ping(
    did: Annotated[str, typer.Option("--did", help="The member to call.")],
    data_dir: DirOption = Path("."),
) -> None:
    """Call a member with an authenticated request and show who it sees calling."""
    import httpx
    from sqlmodel import Session

    from identity.keys import load_private_key
    from identity.peer_client import PeerClient
    from identity.trustlist import get_member

    settings = participant_settings(data_dir)
    engine = open_database(settings)
    with Session(engine) as session:
        member = get_member(session, did)
    engine.dispose()
    if member is None:
        raise StartupError(f"{did} is not a member")
    try:
        key = load_private_key(settings.resolved_private_key_file)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None

    async def call() -> httpx.Response:
        client = PeerClient(settings.did, key, lifetime=settings.token_lifetime_seconds)
        try:
            return await client.request(member.did, "GET", f"{member.dsp_url}/whoami")
        finally:
            await client.aclose()

    try:
        response = asyncio.run(call())
    except httpx.HTTPError as exc:
        raise DidError(f"{member.dsp_url} could not be reached: {exc}") from None
    if response.status_code != 200:
        raise DidError(f"{did} refused: HTTP {response.status_code} {response.text[:300]}")
    console.print(f"{did} answered: it sees us as {response.json().get('peer')}")
