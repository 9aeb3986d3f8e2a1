"""The demo's citizen consent: alice, bob and carol, transit's data agreement, and the city's pull.

``configure_connectors`` (before the connectors start) points each connector at the demo's
consent service. ``show_consent_gated_pull`` (once the data space runs and city holds its
agreement for transit's ``card-trips``):

* gives alice, bob and carol accounts on the consent service's page (new passwords, printed)
  and registers their transit cards;
* transit registers its data agreement (card trips shared with the city for traffic planning,
  a fare discount for sharing) through the consent service's API, as its operator would;
* alice consents, bob refuses, carol consents and then withdraws;
* city pulls ``card-trips`` for traffic planning: transit's connector releases alice's trips
  only; the demo prints the records released and withheld, and what alice's page shows.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from connector.demo_seed import write_demo_files
from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfers import edr_of
from consent.accounts import add_citizen, find_by_name, new_password, set_password
from consent.pages.auth import PAGES_PATH
from consent.receipts import ReceiptSigner
from consent.service import (
    give_consent,
    refuse_consent,
    register_subject_identifier,
    transfers_of,
    withdraw_consent,
)
from consent.settings import CONSENT_API_PATH, ConsentSettings
from identity.keys import load_private_key
from identity.tokens import issue_token
from runtime.database import make_engine
from runtime.settings import CONFIG_FILE, ParticipantSettings, load_settings

PURPOSE = "traffic-planning"
DATASET = "card-trips"
CITIZENS = {"alice": "give", "bob": "refuse", "carol": "give-then-withdraw"}
WAIT_SECONDS = 60.0


def _agreement_terms(city: ParticipantSettings) -> dict[str, Any]:
    return {
        "name": "card-trips-for-traffic-planning",
        "controller_name": "Tessera Transit",
        "purpose": PURPOSE,
        "purpose_description": "Plan bus routes, timetables and roadworks from where and when people travel.",
        "recipients": [{"did": city.did, "name": "Tessera City"}],
        "data_categories": ["dpv:Location", "dpv:TravelHistory"],
        "datasets": [DATASET],
        "lawful_basis": "dpv:Consent",
        "retention": "P1Y",
        "consent_duration_days": 365,
        "notice": {
            "text": (
                "Transit shares the trips made with your travel card (where and when you got on and off) "
                "with the city, which uses them only to plan traffic: bus routes, timetables and roadworks. "
                "Riders who share their movement data get a 10% fare discount. You can stop sharing at "
                "any time; trips after that are not shared."
            ),
            "version": "1.0",
        },
    }


def configure_connectors(all_settings: list[ParticipantSettings]) -> None:
    """Point each connector at the consent service (a line in its tessera.toml, written once)."""
    consent = next(s for s in all_settings if s.kind == "consent")
    for settings in all_settings:
        if settings.kind != "connector":
            continue
        config = settings.data_dir / CONFIG_FILE
        if "consent_service_url" in config.read_text():
            continue
        with config.open("a") as handle:
            handle.write(
                f"consent_service_url = {json.dumps(consent.public_url)}\n"
                f"consent_service_did = {json.dumps(consent.did)}\n"
            )


def _register_agreement(
    consent: ConsentSettings, transit: ParticipantSettings, city: ParticipantSettings
) -> str:
    """Transit's data agreement at the consent service (registered once; its id)."""
    key = load_private_key(transit.resolved_private_key_file)
    api = consent.public_url + CONSENT_API_PATH
    terms = _agreement_terms(city)
    with httpx.Client(timeout=20.0) as client:

        def auth() -> dict[str, str]:
            return {"Authorization": f"Bearer {issue_token(key, transit.did, consent.did)}"}

        response = client.post(f"{api}/agreements", json=terms, headers=auth())
        if response.status_code == 201:
            return str(response.json()["id"])
        if response.status_code != 409:
            raise RuntimeError(
                f"registering transit's data agreement: {response.status_code} {response.text}"
            )
        listed = client.get(f"{api}/agreements", headers=auth())
        listed.raise_for_status()
        found = [a for a in listed.json()["agreements"] if a["name"] == terms["name"]]
        return str(found[0]["id"])


def _citizens(
    consent: ConsentSettings, transit: ParticipantSettings, agreement_id: str, city_did: str
) -> dict[str, str]:
    """Accounts with fresh passwords, their cards at transit, and their choices; name -> password."""
    engine = make_engine(consent.resolved_database_url)
    signer = ReceiptSigner(consent.did, load_private_key(consent.resolved_private_key_file))
    passwords: dict[str, str] = {}
    try:
        with Session(engine) as session:
            for name, choice in CITIZENS.items():
                password = new_password()
                account = find_by_name(session, name)
                if account is None:
                    account = add_citizen(session, name, password=password, display_name=name.title())
                else:
                    set_password(session, name, password)
                passwords[name] = password
                register_subject_identifier(session, account.id, transit.did, f"card-{name}", "card_id")
                actor, method = f"citizen:{name}", "self-service-page"
                if choice == "refuse":
                    refuse_consent(
                        session, signer, account.id, agreement_id, city_did, actor=actor, method=method
                    )
                else:
                    give_consent(
                        session, signer, account.id, agreement_id, city_did, actor=actor, method=method
                    )
                if choice == "give-then-withdraw":
                    withdraw_consent(
                        session, signer, account.id, agreement_id, city_did, actor=actor, method=method
                    )
    finally:
        engine.dispose()
    return passwords


def _city_pulls(
    city: ParticipantSettings, transit: ParticipantSettings, agreement_id: str
) -> list[dict[str, Any]]:
    """City asks transit for a pull of card-trips for traffic planning and fetches it; the records."""
    assert city.management_api_key is not None
    headers = {"X-Api-Key": city.management_api_key.get_secret_value()}
    body = {
        "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
        "@type": "TransferRequest",
        "protocol": "dataspace-protocol-http:2025-1",
        "counterPartyAddress": transit.dsp_url,
        "contractId": agreement_id,
        "transferType": "HttpData-PULL",
        "dataDestination": {"type": "HttpProxy"},
        "purpose": PURPOSE,
    }
    with httpx.Client(base_url=city.public_url, headers=headers, timeout=20.0) as client:
        response = client.post("/management/v3/transferprocesses", json=body)
        response.raise_for_status()
        transfer_id = str(response.json()["@id"])
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            state = client.get(f"/management/v3/transferprocesses/{transfer_id}").json()
            if state["state"] == "STARTED" and "pendingMessage" not in state:
                break
            if state["state"] == "TERMINATED" or time.monotonic() > deadline:
                raise RuntimeError(
                    f"city's pull of {DATASET} is {state['state']}: {state.get('errorDetail')}"
                )
            time.sleep(0.2)
    engine = make_engine(city.resolved_database_url)  # the data address city holds (its EDR)
    try:
        with Session(engine) as session:
            row = session.get(TransferRow, transfer_id)
            address = edr_of(row) if row is not None else None
    finally:
        engine.dispose()
    if address is None:
        raise RuntimeError("city holds no data address for its pull")
    token = endpoint_properties(address)["authorization"]
    data = httpx.get(address["endpoint"], headers={"Authorization": f"Bearer {token}"}, timeout=60.0)
    data.raise_for_status()
    return [json.loads(line) for line in data.text.splitlines() if line.strip()]


def _trips_in_source(transit: ParticipantSettings) -> Counter[str]:
    path: Path = write_demo_files(transit.data_dir, transit.name)[DATASET]
    return Counter(json.loads(line)["card_id"] for line in path.read_text().splitlines() if line.strip())


def show_consent_gated_pull(all_settings: list[ParticipantSettings], city_agreement_id: str | None) -> None:
    """Citizens, their choices, and the city's consent-gated pull of card-trips (printed)."""
    by_name = {s.name: s for s in all_settings}
    city, transit = by_name["city"], by_name["transit"]
    consent = load_settings(ConsentSettings, by_name["consent"].data_dir)
    print("\nCitizen consent (transit shares card trips with the city for traffic planning):", flush=True)
    agreement_id = _register_agreement(consent, transit, city)
    passwords = _citizens(consent, transit, agreement_id, city.did)
    for name, choice in CITIZENS.items():
        said = {
            "give": "consents",
            "refuse": "does not consent",
            "give-then-withdraw": "consented, then withdrew",
        }
        print(
            f"  {name:6} {said[choice]:26} sign in at {consent.public_url}{PAGES_PATH}/sign-in as {name} / {passwords[name]}",
            flush=True,
        )
    if city_agreement_id is None:
        print("  (city holds no agreement for card-trips: no pull)", flush=True)
        return
    records = _city_pulls(city, transit, city_agreement_id)
    released = Counter(r["card_id"] for r in records)
    source = _trips_in_source(transit)
    withheld = sum(source.values()) - sum(released.values())
    shown = ", ".join(f"{card}: {count}" for card, count in sorted(released.items())) or "none"
    print(f"  city pulled {DATASET}: {sum(released.values())} record(s) released ({shown}), "
          f"{withheld} withheld (bob, carol and riders without consent)", flush=True)  # fmt: skip
    engine = make_engine(consent.resolved_database_url)
    try:
        deadline = time.monotonic() + 10.0
        with Session(engine) as session:
            alice = find_by_name(session, "alice")
            assert alice is not None
            while not (received := transfers_of(session, alice.id)) and time.monotonic() < deadline:
                time.sleep(0.2)
        for item in received[:1]:
            print(f"  alice's page shows: {item.recipient_did} received {item.record_count} of her records "
                  f"({item.dataset}, for {item.purpose})", flush=True)  # fmt: skip
    finally:
        engine.dispose()
