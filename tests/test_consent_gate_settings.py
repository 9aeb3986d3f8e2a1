"""Pointing a connector at the consent service: both settings or neither, a trusted DID, fail closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector.app import create_app
from connector.consent_gate import ConsentGate, consent_gate_for
from connector.dataplane.gate import GateContext, GateFailure
from connector.settings import ConnectorSettings
from runtime.participant import init_participant
from runtime.settings import load_settings
from tests.conftest import Participant, free_port


def _settings(tmp_path: Path, **values: str) -> ConnectorSettings:
    init_participant(tmp_path / "transit", "transit", free_port())
    with (tmp_path / "transit" / "tessera.toml").open("a") as config:
        config.writelines(f'{name} = "{value}"\n' for name, value in values.items())
    return load_settings(ConnectorSettings, tmp_path / "transit")


def test_the_url_and_the_did_go_together(tmp_path: Path) -> None:
    from runtime.errors import StartupError

    with pytest.raises((StartupError, ValidationError), match="go together"):
        _settings(tmp_path, consent_service_url="http://127.0.0.1:8004")


def test_plain_http_is_only_for_this_machine(tmp_path: Path) -> None:
    from runtime.errors import StartupError

    with pytest.raises((StartupError, ValidationError), match="https"):
        _settings(
            tmp_path,
            consent_service_url="http://consent.example",
            consent_service_did="did:web:consent.example",
        )


def test_plain_http_on_a_private_network_is_an_explicit_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers on one host reach the consent service by name over http, as compose sets it up."""
    monkeypatch.setenv("TESSERA_CONSENT_SERVICE_URL", "http://consent:8004/")
    monkeypatch.setenv("TESSERA_CONSENT_SERVICE_DID", "did:web:consent%3A8004")
    monkeypatch.setenv("TESSERA_CONSENT_SERVICE_PLAIN_HTTP", "true")
    settings = _settings(tmp_path)
    assert (settings.consent_service_url, settings.consent_service_plain_http) == (
        "http://consent:8004",
        True,
    )

    monkeypatch.setenv("TESSERA_CONSENT_SERVICE_URL", "ftp://consent:8004")
    with pytest.raises(Exception, match="https"):
        load_settings(ConnectorSettings, tmp_path / "transit")


def test_without_settings_the_closed_gate_stays(make_connector: Callable[..., Participant]) -> None:
    transit = make_connector("transit")
    assert consent_gate_for(transit.core) is None
    assert create_app(transit.core).state.personal_gate is None  # the data plane's ClosedGate answers


def test_a_consent_service_off_the_trust_list_is_never_asked(
    make_connector: Callable[..., Participant],
) -> None:
    transit = make_connector("transit")
    gate = ConsentGate(transit.core, "http://127.0.0.1:9", "did:web:consent.example")
    context = GateContext(transit.did, "did:web:city.example", "traffic-planning", "card-trips", "t-1")

    async def ask() -> None:
        await gate.for_release().decide(["card-alice"], context)

    with pytest.raises(GateFailure, match="not on the trust list"):
        asyncio.run(gate.client())
    with pytest.raises(GateFailure):
        asyncio.run(ask())
