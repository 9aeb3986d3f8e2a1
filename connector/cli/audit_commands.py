"""``tessera audit export|verify``: the transfer log as an audit bundle, checked offline.

``export`` reads this participant's database, signs a fresh checkpoint with its key and
writes the bundle of the entries logged in the time range. ``verify`` needs the bundle only:
no network, no participant directory; it exits 1 naming what failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import DirOption, open_database, participant_settings
from runtime.errors import StartupError

audit_app = typer.Typer(
    help="The signed transfer log: export an audit bundle, verify one offline.", no_args_is_help=True
)


@audit_app.command("export")
def export_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Write the bundle (zip) to this file.")],
    since: Annotated[
        str | None, typer.Option("--from", help="First day or moment (YYYY-MM-DD, ISO 8601 or epoch ms).")
    ] = None,
    until: Annotated[str | None, typer.Option("--to", help="Last day or moment (inclusive).")] = None,
    data_dir: DirOption = Path("."),
) -> None:
    """Write the audit bundle of the entries logged between --from and --to (default: all)."""
    from connector.translog.bundle import write_bundle
    from connector.translog.checkpoint import CheckpointError
    from connector.translog.times import TimeError, parse_time
    from identity.did import dsp_services
    from identity.keys import load_private_key

    try:
        from_ms = parse_time(since) if since else 0
        to_ms = parse_time(until, end_of_day=True) if until else int(time.time() * 1000)
    except TimeError as exc:
        raise StartupError(str(exc)) from None
    if from_ms > to_ms:
        raise StartupError("--from is after --to")
    settings = participant_settings(data_dir)
    key = load_private_key(settings.resolved_private_key_file)
    engine = open_database(settings)
    services = dsp_services(settings.did, settings.public_url, settings.dsp_url)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as out:
            summary = write_bundle(engine, settings.did, key, from_ms, to_ms, out, services=services)
        partial.replace(output)
    except CheckpointError as exc:
        partial.unlink(missing_ok=True)
        raise StartupError(str(exc)) from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StartupError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        engine.dispose()
    print(
        f"wrote entries {summary.start}..{summary.end - 1} ({summary.end - summary.start}), "
        f"{summary.checkpoints} checkpoint(s) up to size {summary.tree_size} and "
        f"{summary.agreements} agreement(s) to {output}",
        file=sys.stderr,
    )


@audit_app.command("verify")
def verify_command(
    bundle: Annotated[Path, typer.Argument(help="The audit bundle (zip).")],
    require_cosignatures: Annotated[
        int,
        typer.Option(
            "--require-cosignatures", min=0, help="Fail a checkpoint with fewer witness cosignatures."
        ),
    ] = 0,
) -> None:
    """Check a bundle offline: every signature, proof and agreement; exit 1 naming any failure."""
    from connector.translog.audit import BundleError, verify_bundle

    if not bundle.is_file():
        raise StartupError(f"{bundle} does not exist")
    try:
        report = verify_bundle(bundle, min_cosignatures=require_cosignatures)
    except BundleError as exc:
        raise StartupError(f"{bundle} is not a readable audit bundle: {exc}") from None
    print(report.render())
    if not report.ok:
        raise StartupError(report.failures[0])
