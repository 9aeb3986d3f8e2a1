"""``tessera contracts export|verify``: signed agreements as evidence, checked offline.

``export`` reads an agreement from this participant's database and writes its
evidence bundle (the agreement, both signatures, both public keys).
``verify`` needs the bundle only: no network, no participant directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from connector.cli.common import DirOption, open_database, participant_settings
from runtime.errors import StartupError

if TYPE_CHECKING:
    from sqlmodel import Session

    from contracts.agreements import AgreementRecord
    from contracts.evidence import EvidenceReport, PartyResult
    from runtime.settings import ParticipantSettings

# Database, key and signature imports happen inside the commands: the CLI stays quick to start.

contracts_app = typer.Typer(
    help="Signed contract agreements: export them as evidence, verify evidence offline.",
    no_args_is_help=True,
)


def _own_public_jwk(settings: ParticipantSettings) -> dict[str, str]:
    from identity.keys import load_private_key, normalised_public_jwk, public_jwk
    from runtime.participant import PUBLIC_KEY_FILE

    path = settings.data_dir / PUBLIC_KEY_FILE
    try:
        return normalised_public_jwk(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        # An older directory without the public key file: the private key knows it.
        return public_jwk(load_private_key(settings.resolved_private_key_file).public_key())
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path} cannot be read as a public JWK: {exc}") from None


def _find_agreement(session: Session, agreement_id: str) -> AgreementRecord:
    from contracts.agreements import agreement_for_negotiation, get_agreement

    record = get_agreement(session, agreement_id) or agreement_for_negotiation(session, agreement_id)
    if record is None:
        raise StartupError(f"there is no agreement {agreement_id!r} (nor a negotiation of that id) here")
    return record


def _party_keys(session: Session, settings: ParticipantSettings, record: AgreementRecord) -> dict[str, Any]:
    """Our own key, and the counter-party's key as pinned in our trust list."""
    from identity.trustlist import get_member

    keys: dict[str, Any] = {settings.did: _own_public_jwk(settings)}
    for did in (record.provider_did, record.consumer_did):
        if did != settings.did:
            member = get_member(session, did)
            if member is not None:
                keys[did] = member.public_jwk
    return keys


@contracts_app.command("export")
def export_command(
    agreement_id: Annotated[str, typer.Argument(help="The agreement's id (or its negotiation's id).")],
    data_dir: DirOption = Path("."),
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the bundle to this file (default: stdout).")
    ] = None,
) -> None:
    """Write an agreement's evidence bundle: the agreement, both signatures, both public keys."""
    from sqlmodel import Session

    from contracts.evidence import EvidenceError, export_bundle, verify_bundle

    settings = participant_settings(data_dir)
    engine = open_database(settings)
    try:
        with Session(engine) as session:
            record = _find_agreement(session, agreement_id)
            keys = _party_keys(session, settings, record)
    finally:
        engine.dispose()
    try:
        bundle = export_bundle(record, keys)
    except EvidenceError as exc:
        raise StartupError(f"{exc}; add it to the trust list (tessera dataspace add)") from None
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    report = verify_bundle(bundle)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"cannot write {output}: {exc.strerror or exc}") from None
        print(f"wrote the evidence of agreement {record.id} to {output}", file=sys.stderr)
    if not report.ok:
        print(f"tessera: warning: the exported bundle does not verify: {report.problems[0]}", file=sys.stderr)


def _read_bundle(file: Path) -> Any:
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupError(f"{file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"{file} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StartupError(f"{file} is not JSON: {exc}") from None


def _pinned_keys(data_dir: Path) -> dict[str, Any]:
    """The keys a participant trusts: its trust list's pinned keys and its own."""
    from sqlmodel import Session

    from identity.trustlist import list_members

    settings = participant_settings(data_dir)
    engine = open_database(settings)
    try:
        with Session(engine) as session:
            pinned: dict[str, Any] = {member.did: member.public_jwk for member in list_members(session)}
    finally:
        engine.dispose()
    pinned[settings.did] = _own_public_jwk(settings)
    return pinned


def _party_line(result: PartyResult) -> str:
    line = f"  {result.role:<9} {result.did or '?'}\n            {result.message}"
    if result.key_id:
        line += f"\n            key {result.key_id}, thumbprint {result.key_thumbprint}"
    return line


def _print_report(report: EvidenceReport) -> None:
    agreement = report.agreement
    if agreement:
        print(f"Agreement {agreement.get('@id')}")
        print(f"  target    {agreement.get('target')}")
        print(f"  timestamp {agreement.get('timestamp')}")
    print("Signatures")
    for result in report.parties:
        print(_party_line(result))
    for note in report.notes:
        print(f"Note: {note}")
    for problem in report.problems:
        print(f"FAILED: {problem}")
    if report.ok:
        signed = "signed by both parties" if report.both_signed else "signed by one party only (the provider)"
        print(f"Result: VALID — {signed}")
        if any(result.signed for result in report.parties):
            print("Keys: compare the thumbprints with the parties' DID documents or your trust list.")
    else:
        print("Result: NOT VALID")


@contracts_app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The evidence bundle (JSON; '-' reads stdin).")],
    require_both: Annotated[
        bool, typer.Option("--require-both", help="Fail unless both parties signed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Optional: also check the keys against this participant's trust list and own key."
        ),
    ] = None,
) -> None:
    """Check an evidence bundle offline: exit 0 when every signature present holds (the provider's
    included), 1 naming the failure otherwise."""
    from dataclasses import asdict

    from contracts.evidence import verify_bundle

    bundle = _read_bundle(file)
    pinned = _pinned_keys(data_dir) if data_dir is not None else None
    report = verify_bundle(bundle, require_both=require_both, pinned=pinned)
    if as_json:
        print(json.dumps({k: v for k, v in asdict(report).items() if k != "agreement"}, indent=2))
    else:
        _print_report(report)
    if not report.ok:
        raise StartupError("; ".join(report.problems))
