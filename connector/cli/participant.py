"""``tessera init``, ``serve``, ``demo``, ``db upgrade`` and ``consent init|serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from connector.cli.common import DirOption, participant_settings
from runtime.errors import StartupError

console = Console()
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
consent_app = typer.Typer(help="The citizen consent service.", no_args_is_help=True)


def _init(data_dir: Path, name: str, port: int, public_url: str | None, host: str, kind: str) -> None:
    from runtime.participant import init_participant

    created = init_participant(data_dir, name, port, kind=kind, host=host, public_url=public_url)
    console.print(f"Created {kind} [bold]{name}[/bold] in {created.data_dir}")
    console.print(f"  DID:        {created.did}")
    console.print(f"  public URL: {created.public_url}")
    console.print(f"  management API key (shown once; also in {created.data_dir}/management-api-key):")
    console.print(f"  {created.management_api_key}", highlight=False, soft_wrap=True)


NameOption = Annotated[str, typer.Option("--name", help="Participant name: lowercase letters, digits, '-'.")]
PortOption = Annotated[int, typer.Option("--port", help="Port to listen on.")]
PublicUrlOption = Annotated[
    str | None,
    typer.Option("--public-url", help="URL peers reach us at (default http://HOST:PORT); gives the DID."),
]
HostOption = Annotated[str, typer.Option("--host", help="Interface to listen on.")]


def register_participant_commands(app: typer.Typer) -> None:
    @app.command("init")
    def init_command(
        name: NameOption,
        port: PortOption,
        data_dir: DirOption = Path("."),
        public_url: PublicUrlOption = None,
        host: HostOption = "127.0.0.1",
    ) -> None:
        """Create a connector: Ed25519 keys, did:web identifier, configuration, management API key."""
        _init(data_dir, name, port, public_url, host, "connector")

    @app.command("serve")
    def serve_command(data_dir: DirOption = Path(".")) -> None:
        """Run the participant in DIR (migrating its database first) until interrupted."""
        settings = participant_settings(data_dir)
        if settings.kind == "consent":
            _serve_consent(data_dir)
        else:
            _serve_connector(data_dir)

    @app.command("demo")
    def demo_command(
        data_dir: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its state.")] = Path(
            ".tessera-demo"
        ),
        base_port: Annotated[int, typer.Option("--base-port", help="Port of the first participant.")] = 8001,
        mqtt_broker: Annotated[
            str | None,
            typer.Option(
                "--mqtt-broker",
                help="HOST:PORT of an MQTT broker for the live sensor data; without it the demo starts "
                "its own (pure Python) on the port after the consent service's.",
            ),
        ] = None,
    ) -> None:
        """Run the demo data space: city, transit, utility and the consent service on 127.0.0.1."""
        from connector.demo import run_demo

        run_demo(data_dir, base_port, mqtt_broker)


def _serve_connector(data_dir: Path) -> None:
    from connector.app import create_app
    from connector.settings import load_connector_settings
    from runtime.service import serve

    serve(load_connector_settings(data_dir), "connector", create_app)


def _serve_consent(data_dir: Path) -> None:
    from consent.app import create_app
    from consent.settings import load_consent_settings
    from runtime.service import serve

    serve(load_consent_settings(data_dir), "consent", create_app)


@db_app.command("upgrade")
def db_upgrade(data_dir: DirOption = Path(".")) -> None:
    """Apply every pending migration to the participant's database."""
    from runtime.service import prepare_database

    settings = participant_settings(data_dir)
    prepare_database(settings, settings.kind)
    console.print(f"{settings.name}: database schema is up to date")


@consent_app.command("init")
def consent_init(
    name: NameOption,
    port: PortOption,
    data_dir: DirOption = Path("."),
    public_url: PublicUrlOption = None,
    host: HostOption = "127.0.0.1",
) -> None:
    """Create a consent service participant (keys, DID, configuration)."""
    _init(data_dir, name, port, public_url, host, "consent")


@consent_app.command("serve")
def consent_serve(data_dir: DirOption = Path(".")) -> None:
    """Run the consent service in DIR until interrupted."""
    if participant_settings(data_dir).kind != "consent":
        raise StartupError(f"{data_dir.resolve()} is not a consent service (kind is not 'consent')")
    _serve_consent(data_dir)
