"""`tessera dataspace add|list|remove`: the member list an operator keeps, through the real CLI."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlmodel import Session

from connector.settings import load_connector_settings
from identity.did import build_did_document, dsp_services
from identity.keys import public_jwk
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.service import prepare_database
from tests.conftest import CliResult
from tests.helpers import (
    Call,
    assert_one_line_error,
    new_participant,
    one_line_error,
    public_jwk_of,
    run_parallel,
    serving,
    table_column,
)

Cli = Callable[..., CliResult]
TRANSIT = "did:web:transit.example.org"
TRANSIT_URL = "https://transit.example.org/dsp/2025-1"


def _jwk_file(directory: Path, name: str, jwk: Any) -> Path:
    path = directory / name
    path.write_text(json.dumps(jwk) if not isinstance(jwk, str) else jwk)
    return path


def _members(cli: Cli, data_dir: Path) -> list[dict[str, Any]]:
    result = cli("dataspace", "list", "--json", "--dir", str(data_dir))
    assert result.code == 0, result.stderr
    members: list[dict[str, Any]] = json.loads(result.stdout)
    return members


def test_add_list_remove(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir, _port = new_participant(tmp_path)
    jwk = public_jwk(Ed25519PrivateKey.generate().public_key())
    key_file = _jwk_file(tmp_path, "transit.jwk", jwk)

    added = tessera_cli(
        "dataspace",
        "add",
        "--dir",
        str(data_dir),
        "--did",
        TRANSIT,
        "--url",
        TRANSIT_URL + "/",
        "--key",
        str(key_file),
    )
    assert added.code == 0, added.stderr
    assert TRANSIT in added.stdout

    as_json, table = run_parallel(
        tessera_cli,
        [
            (("dataspace", "list", "--json", "--dir", str(data_dir)), None),
            (("dataspace", "list", "--dir", str(data_dir)), {"COLUMNS": "80"}),
        ],
    )
    (member,) = json.loads(as_json.stdout)
    assert member["did"] == TRANSIT
    assert member["url"] == TRANSIT_URL  # the trailing '/' is not kept
    assert member["key"] == jwk
    assert member["source"] == "manual"
    assert datetime.fromisoformat(member["added"]).utcoffset() is not None  # a moment, not a wall-clock time

    # In an 80-column terminal DIDs and URLs wrap, but nothing of them is cut off.
    assert table_column(table.stdout, "DID") == TRANSIT
    assert table_column(table.stdout, "URL") == TRANSIT_URL
    assert table_column(table.stdout, "key (x)").startswith(jwk["x"][:8])  # the key is only hinted at
    assert table_column(table.stdout, "source") == "manual"

    removed = tessera_cli("dataspace", "remove", "--dir", str(data_dir), "--did", TRANSIT)
    assert removed.code == 0, removed.stderr
    assert f"removed {TRANSIT}" in removed.stdout
    again, listed = run_parallel(
        tessera_cli,
        [
            (("dataspace", "remove", "--dir", str(data_dir), "--did", TRANSIT), None),
            (("dataspace", "list", "--json", "--dir", str(data_dir)), None),
        ],
    )
    assert_one_line_error(again, TRANSIT, "not a member")
    assert json.loads(listed.stdout) == []


def test_bad_input_is_one_line_and_adds_nothing(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir, _port = new_participant(tmp_path)
    settings = load_connector_settings(data_dir)
    prepare_database(settings, "connector")  # migrated once here, so the parallel runs only read it
    engine = make_engine(settings.resolved_database_url)
    existing_jwk = public_jwk(Ed25519PrivateKey.generate().public_key())
    with Session(engine) as session:
        add_member(session, TRANSIT, TRANSIT_URL, existing_jwk)
    engine.dispose()

    private = Ed25519PrivateKey.generate()
    good = _jwk_file(tmp_path, "good.jwk", public_jwk(private.public_key()))
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    with_d = {**public_jwk(private.public_key()), "d": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
    rsa = {"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl", "e": "AQAB"}
    cases: list[tuple[str, list[str], tuple[str, ...]]] = [
        ("key file missing", ["--key", str(tmp_path / "absent.jwk")], ("absent.jwk", "does not exist")),
        (
            "key file not JSON",
            ["--key", str(_jwk_file(tmp_path, "text.jwk", "hello"))],
            ("text.jwk", "not JSON"),
        ),
        ("private JWK", ["--key", str(_jwk_file(tmp_path, "private.jwk", with_d))], ("private key",)),
        ("RSA JWK", ["--key", str(_jwk_file(tmp_path, "rsa.jwk", rsa))], ("Ed25519",)),
        ("not a DID", ["--did", "transit-two"], ("'transit-two'", "not a DID")),
        ("URL with a query", ["--url", "https://bad.example.org/dsp?x=1"], ("bad.example.org", "query")),
    ]
    calls: list[Call] = []
    for index, (_case, override, _needles) in enumerate(cases):
        options = {
            "--did": f"did:web:bad-{index}.example.org",
            "--url": "https://bad.example.org/dsp",
            "--key": str(good),
        }
        options.update(dict(zip(override[::2], override[1::2], strict=True)))
        arguments = [item for pair in options.items() for item in pair]
        calls.append((("dataspace", "add", "--dir", str(data_dir), *arguments), None))

    results = run_parallel(tessera_cli, calls)

    problems = []
    for (case, _override, needles), result in zip(cases, results, strict=True):
        problem = one_line_error(result, *needles)
        if problem is not None:
            problems.append(f"{case}: {problem}")
    assert not problems, "\n".join(problems)
    private_refused = results[2]
    assert with_d["d"] not in private_refused.stdout + private_refused.stderr  # not even in the error
    members = _members(tessera_cli, data_dir)
    assert [(m["did"], m["url"], m["key"]) for m in members] == [(TRANSIT, TRANSIT_URL, existing_jwk)]


def test_add_from_a_running_connectors_did_document(tmp_path: Path, tessera_cli: Cli) -> None:
    city, _city_port = new_participant(tmp_path, "city")
    transit, transit_port = new_participant(tmp_path, "transit")
    with serving(transit, transit_port) as served:
        added = tessera_cli(
            "dataspace",
            "add",
            "--dir",
            str(city),
            "--did-document",
            f"{served.base_url}/.well-known/did.json",
        )
    assert added.code == 0, added.stderr
    (member,) = _members(tessera_cli, city)
    assert member["did"] == f"did:web:127.0.0.1%3A{transit_port}"
    assert member["key"] == public_jwk_of(transit)
    assert member["url"] == f"http://127.0.0.1:{transit_port}/dsp/2025-1"
    assert member["source"] == "did-document"


@contextmanager
def _document_server(document: dict[str, Any]) -> Iterator[str]:
    """A plain web server on 127.0.0.1 handing out ``document`` at /.well-known/did.json."""
    body = json.dumps(document).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/.well-known/did.json" else 404)
            self.send_header("Content-Type", "application/did+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_document_claiming_another_did_is_refused(tmp_path: Path, tessera_cli: Cli) -> None:
    city, _port = new_participant(tmp_path, "city")
    victim_did = "did:web:transit.example.org"
    forged = build_did_document(
        victim_did,
        Ed25519PrivateKey.generate().public_key(),
        dsp_services(victim_did, "https://transit.example.org", TRANSIT_URL),
    )
    with _document_server(forged) as base_url:
        refused = tessera_cli(
            "dataspace", "add", "--dir", str(city), "--did-document", f"{base_url}/.well-known/did.json"
        )
    port = base_url.rsplit(":", 1)[1]
    assert_one_line_error(refused, victim_did, f"did:web:127.0.0.1%3A{port}")
    assert _members(tessera_cli, city) == []
