"""What a participant shows the world without credentials: versions, DID document, health, metrics, logs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.engine import make_url

from connector.app import create_app as create_connector_app
from consent.app import create_app as create_consent_app
from consent.settings import CONSENT_API_PATH, load_consent_settings
from identity.did import did_from_url
from runtime.database import make_engine
from runtime.service import ServiceCore, prepare_database
from tests.conftest import Participant
from tests.helpers import dsp_schema_errors, new_participant, public_jwk_of, serving

MakeConnector = Callable[..., Participant]
UNREACHABLE_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/x"


def test_dspace_version_is_public_and_valid_dsp_2025_1(make_connector: MakeConnector) -> None:
    with make_connector().client() as client:
        response = client.get("/.well-known/dspace-version")  # no Authorization header at all
    assert response.status_code == 200
    body = response.json()
    assert dsp_schema_errors("common/protocol-version-schema.json", body) == []
    assert {"version": "2025-1", "path": "/dsp/2025-1", "binding": "HTTPS"}.items() <= (
        body["protocolVersions"][0].items()
    )
    # The schema check bites: the same document without its binding is refused.
    del body["protocolVersions"][0]["binding"]
    assert dsp_schema_errors("common/protocol-version-schema.json", body) != []


def test_did_document_carries_the_key_and_dsp_services(make_connector: MakeConnector) -> None:
    participant = make_connector("city")
    settings = participant.settings
    with participant.client() as client:
        response = client.get("/.well-known/did.json")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/did+json")
        document = response.json()
        services = {service["type"]: service for service in document["service"]}

        # The DataService entry points at the version endpoint, and that endpoint answers.
        data_service = services["DataService"]["serviceEndpoint"]
        assert data_service == f"{settings.public_url}/.well-known/dspace-version"
        versions = client.get(urlsplit(data_service).path)
        assert versions.status_code == 200
        assert versions.json()["protocolVersions"][0]["version"] == "2025-1"

    assert document["id"] == participant.did == did_from_url(settings.public_url)
    (method,) = document["verificationMethod"]
    assert method["controller"] == participant.did
    assert method["publicKeyJwk"]["kty"] == "OKP"
    assert method["publicKeyJwk"]["crv"] == "Ed25519"
    assert method["publicKeyJwk"] == public_jwk_of(settings.data_dir)
    assert "d" not in method["publicKeyJwk"]
    assert document["authentication"] == [method["id"]]
    assert document["assertionMethod"] == [method["id"]]

    catalog = services["CatalogService"]
    assert dsp_schema_errors("common/did-service-schema.json", catalog) == []
    assert catalog["serviceEndpoint"] == f"{settings.public_url}/dsp/2025-1/catalog"


def test_consent_service_publishes_its_did_document_and_health(tmp_path: Path) -> None:
    data_dir, _port = new_participant(tmp_path, "consent", kind="consent")
    settings = load_consent_settings(data_dir)
    prepare_database(settings, "consent")
    core = ServiceCore.create(settings)
    try:
        with TestClient(create_consent_app(core)) as client:
            document = client.get("/.well-known/did.json").json()
            health = client.get("/health")
    finally:
        core.engine.dispose()
    assert document["id"] == settings.did
    assert document["verificationMethod"][0]["publicKeyJwk"] == public_jwk_of(data_dir)
    (service,) = document["service"]
    assert service["type"] == "TesseraConsentService"
    assert service["serviceEndpoint"] == f"{settings.public_url}{CONSENT_API_PATH}"
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "did": settings.did}


def test_health_is_503_when_the_database_does_not_answer(make_connector: MakeConnector) -> None:
    participant = make_connector()
    with participant.client() as client:
        ok = client.get("/health")
    assert ok.status_code == 200
    assert ok.json()["database"] == "ok"

    engine = make_engine(UNREACHABLE_DATABASE)
    core = ServiceCore.create(participant.settings, engine=engine)
    try:
        with TestClient(create_connector_app(core)) as client:
            started = time.monotonic()
            down = client.get("/health")
            elapsed = time.monotonic() - started
    finally:
        engine.dispose()
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "database": "unreachable"}
    assert "127.0.0.1:1" not in down.text  # where the database lives is not told to the world
    assert elapsed < 6


def test_health_turns_503_when_postgresql_database_is_dropped(
    make_connector: MakeConnector, pg_database_factory: Callable[[], str], pg_admin_url: str
) -> None:
    database_url = pg_database_factory()
    participant = make_connector(database_url=database_url)
    with participant.client() as client:
        before = client.get("/health")
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            name = str(make_url(database_url).database)
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        after = client.get("/health")
    assert before.status_code == 200
    assert after.status_code == 503
    assert after.json()["database"] == "unreachable"


def test_metrics_and_request_ids(make_connector: MakeConnector) -> None:
    with make_connector().client() as client:
        plain = client.get("/health")
        echoed = client.get("/.well-known/dspace-version", headers={"X-Request-ID": "trace-42.a_b"})
        unsafe = client.get("/.well-known/did.json", headers={"X-Request-ID": "evil id; <script>"})
        too_long = client.get("/health", headers={"X-Request-ID": "a" * 65})
        missing = client.get("/no/such/thing/123")
        metrics = client.get("/metrics")

    for response in (plain, echoed, unsafe, too_long, missing, metrics):
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", response.headers["X-Request-ID"])
    assert echoed.headers["X-Request-ID"] == "trace-42.a_b"
    assert unsafe.headers["X-Request-ID"] != "evil id; <script>"
    assert too_long.headers["X-Request-ID"] != "a" * 65
    assert len({r.headers["X-Request-ID"] for r in (plain, unsafe, too_long, missing)}) == 4

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE tessera_http_requests_total counter" in text
    # Labelled by route template (routes of included routers too), never by raw path.
    assert 'tessera_http_requests_total{method="GET",route="/health",status="200"} 2.0' in text
    assert 'route="/.well-known/dspace-version",status="200"' in text
    assert 'route="/.well-known/did.json",status="200"' in text
    assert 'route="unmatched",status="404"' in text
    assert "/no/such/thing" not in text


def test_serve_logs_one_json_object_per_line_with_request_ids(tmp_path: Path) -> None:
    data_dir, port = new_participant(tmp_path)
    with serving(data_dir, port) as served:
        given = httpx.get(f"{served.base_url}/.well-known/did.json", headers={"X-Request-ID": "log-check-1"})
        generated = httpx.get(f"{served.base_url}/.well-known/dspace-version")
        assert given.headers["X-Request-ID"] == "log-check-1"
        # Read while it runs: each line is written as it happens, not when the process exits.
        deadline = time.monotonic() + 5
        while (
            generated.headers["X-Request-ID"] not in served.log_path.read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        lines = served.log_lines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"log line is not JSON: {line!r}") from None
    assert all(isinstance(record, dict) and "event" in record and "level" in record for record in records)
    requests = [record for record in records if record["event"] == "request"]
    assert requests, lines
    assert all(record.get("request_id") for record in requests)
    by_id = {record["request_id"]: record for record in requests}
    assert by_id["log-check-1"]["path"] == "/.well-known/did.json"
    assert by_id[generated.headers["X-Request-ID"]]["path"] == "/.well-known/dspace-version"
    api_key = (data_dir / "management-api-key").read_text().strip()
    assert api_key not in served.log_path.read_text()


def test_a_nul_in_the_path_is_a_400_not_a_server_error(make_connector) -> None:
    city = make_connector("city")
    key = city.settings.management_api_key.get_secret_value()
    response = city.client().get("/management/v3/assets/a%00b", headers={"X-Api-Key": key})
    assert response.status_code == 400
