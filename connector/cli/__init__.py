"""The ``tessera`` command line: the composition root of the product.

Every command reports failures as one line on stderr and a non-zero exit;
tracebacks are for bugs, not for operator mistakes.
"""

from __future__ import annotations

import sys

import typer

from connector.cli.audit_commands import audit_app
from connector.cli.auditor_commands import auditor_app
from connector.cli.catalog_commands import assets_app, register_catalog_commands
from connector.cli.citizen_commands import citizen_app
from connector.cli.contracts_commands import contracts_app
from connector.cli.dataspace import dataspace_app
from connector.cli.fetch_command import register_fetch_command
from connector.cli.participant import consent_app, db_app, register_participant_commands
from identity.errors import IdentityError
from runtime.errors import StartupError

app = typer.Typer(
    name="tessera",
    help="Tessera: a federated data-space connector with citizen consent management.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register_participant_commands(app)
app.add_typer(db_app, name="db")
app.add_typer(dataspace_app, name="dataspace")
app.add_typer(consent_app, name="consent")
consent_app.add_typer(citizen_app, name="citizen")
app.add_typer(assets_app, name="assets")
register_catalog_commands(app)
app.add_typer(contracts_app, name="contracts")
app.add_typer(audit_app, name="audit")
register_fetch_command(app)
app.add_typer(auditor_app, name="auditor")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is returned, never raised."""
    try:
        # Standalone mode: typer reports usage errors itself (usage line, exit 2) with
        # whichever click it bundles; operator mistakes in commands arrive below.
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    except (StartupError, IdentityError) as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
