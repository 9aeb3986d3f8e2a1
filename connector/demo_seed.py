"""The demo's datasets: what city, transit and utility publish, and to whom.

Seeding goes through each connector's Management API, exactly as an operator
would; a second run finds everything in place (409) and changes nothing.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from connector.demo_sensors import TOPIC as SENSOR_TOPIC
from runtime.settings import ParticipantSettings

MANAGEMENT_CONTEXT = ["https://w3id.org/edc/connector/management/v0.0.1"]
ASSET_CONTEXT = {
    "dct": "http://purl.org/dc/terms/",
    "dcat": "http://www.w3.org/ns/dcat#",
    "tessera": "https://w3id.org/tessera/v1/ns/",
}
CC_BY = "https://creativecommons.org/licenses/by/4.0/"
MEMBERSHIPS = {
    "city": "public-authority",
    "transit": "transport-operator",
    "utility": "utility-operator",
    "consent": "consent-service",
}


@dataclass(frozen=True)
class DemoDataset:
    owner: str
    asset_id: str
    title: str
    description: str
    keywords: tuple[str, ...]
    themes: tuple[str, ...]
    media_type: str
    frequency: str
    admitted: tuple[str, ...] | None  # memberships the access policy admits; None: every member
    personal: tuple[str, str] | None = None  # (subject field, consent purpose)
    live_topic: str | None = None  # an MQTT topic on the demo's broker instead of a file


DATASETS = (
    DemoDataset(
        "city", "bike-counts", "Bike counts", "Hourly bicycle counts at the city's counting stations.",
        ("bicycles", "mobility", "counts"), ("http://publications.europa.eu/resource/authority/data-theme/TRAN",),
        "text/csv", "HOURLY", None,
    ),
    DemoDataset(
        "transit", "traffic-sensors", "Traffic sensor observations",
        "Live vehicle counts from the road sensors on the bus corridors, one observation a second (MQTT).",
        ("traffic", "sensors", "live"), ("http://publications.europa.eu/resource/authority/data-theme/TRAN",),
        "application/x-ndjson", "CONT", ("public-authority",), live_topic=SENSOR_TOPIC,
    ),
    DemoDataset(
        "transit", "ridership-by-stop", "Ridership by stop",
        "Daily boardings and alightings per stop, aggregated (no personal data).",
        ("ridership", "public transport", "stops"), ("http://publications.europa.eu/resource/authority/data-theme/TRAN",),
        "text/csv", "DAILY", None,
    ),
    DemoDataset(
        "transit", "card-trips", "Card trips",
        "Individual trips of transit card holders; released only for riders who consented.",
        ("trips", "travel card", "origin-destination"), ("http://publications.europa.eu/resource/authority/data-theme/TRAN",),
        "application/x-ndjson", "DAILY", ("public-authority",), ("card_id", "traffic-planning"),
    ),
    DemoDataset(
        "utility", "grid-load", "Grid load by district",
        "Hourly electricity load per city district, aggregated (no personal data); pushed to the city.",
        ("energy", "grid", "load"), ("http://publications.europa.eu/resource/authority/data-theme/ENER",),
        "text/csv", "HOURLY", ("public-authority",),
    ),
    DemoDataset(
        "utility", "smart-meter-readings", "Smart meter readings",
        "Quarter-hourly electricity readings per household meter; released only with consent.",
        ("energy", "smart meter", "electricity"), ("http://publications.europa.eu/resource/authority/data-theme/ENER",),
        "application/x-ndjson", "15MIN", ("public-authority",), ("meter_id", "energy-planning"),
    ),
)  # fmt: skip


def write_demo_files(data_dir: Path, owner: str) -> dict[str, Path]:
    """Small, deterministic data files for the owner's datasets (kept if already there)."""
    rng = random.Random(f"tessera-demo-{owner}")  # noqa: S311 - demo data, not security
    start = datetime(2026, 11, 1, tzinfo=UTC)
    files: dict[str, Path] = {}
    target = data_dir / "demo-data"
    target.mkdir(exist_ok=True)
    for dataset in DATASETS:
        if dataset.owner != owner or dataset.live_topic:
            continue
        suffix = (
            ".csv"
            if dataset.media_type == "text/csv"
            else (
                ".json" if "json" in dataset.media_type and "ndjson" not in dataset.media_type else ".ndjson"
            )
        )
        path = target / f"{dataset.asset_id}{suffix}"
        files[dataset.asset_id] = path
        if path.exists():
            continue
        rows = _rows(dataset.asset_id, rng, start)
        if suffix == ".csv":
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        elif suffix == ".json":
            path.write_text(json.dumps({"value": rows}, indent=1), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return files


def _rows(asset_id: str, rng: random.Random, start: datetime) -> list[dict[str, Any]]:
    hours = [start + timedelta(hours=h) for h in range(48)]
    if asset_id == "bike-counts":
        return [
            {"station": s, "hour": t.isoformat(), "bicycles": rng.randint(0, 240)}
            for s in ("Bridge St", "Market Sq", "Riverside") for t in hours
        ]  # fmt: skip
    if asset_id == "traffic-sensors":
        return [
            {
                "@iot.id": i,
                "phenomenonTime": t.isoformat(),
                "result": rng.randint(50, 900),
                "datastream": "A1-north",
            }
            for i, t in enumerate(hours)
        ]
    if asset_id == "grid-load":
        return [
            {"district": d, "hour": t.isoformat(), "megawatts": round(rng.uniform(4.0, 38.0), 2)}
            for d in ("Old Town", "Harbour", "University") for t in hours
        ]  # fmt: skip
    if asset_id == "ridership-by-stop":
        return [
            {"stop": s, "day": (start + timedelta(days=d)).date().isoformat(), "boardings": rng.randint(100, 5000)}
            for s in ("Central", "Harbour", "University", "Hospital") for d in range(14)
        ]  # fmt: skip
    if asset_id == "card-trips":
        # alice, bob and carol have accounts at the consent service (demo_consent); the others never signed up
        riders = ("alice", "bob", "carol", "dan", "erin", "frank", "grace")
        return [
            {"card_id": f"card-{rider}", "from": rng.choice(("Central", "Harbour")), "to": "University",
             "departed": (start + timedelta(hours=h)).isoformat()}
            for rider in riders for h in range(0, 48, 8)
        ]  # fmt: skip
    return [
        {"meter_id": f"meter-{house}", "time": (start + timedelta(minutes=15 * q)).isoformat(), "kwh": round(rng.uniform(0.05, 1.2), 3)}
        for house in ("alice", "bob", "carol") for q in range(16)
    ]  # fmt: skip


def _policy(policy_id: str, admitted: tuple[str, ...] | None) -> dict[str, Any]:
    permission: dict[str, Any] = {"action": "use"}
    if admitted is not None:
        permission["constraint"] = [
            {"leftOperand": "membership", "operator": "isAnyOf", "rightOperand": list(admitted)}
        ]
    return {"@context": MANAGEMENT_CONTEXT, "@type": "PolicyDefinition", "@id": policy_id,
            "policy": {"@type": "Set", "permission": [permission]}}  # fmt: skip


def _data_address(dataset: DemoDataset, path: Path | None, broker: str | None) -> dict[str, Any]:
    if dataset.live_topic:
        if broker is None:
            raise RuntimeError(f"{dataset.asset_id} is live: the demo needs an MQTT broker for it")
        return {"@type": "DataAddress", "type": "Mqtt", "broker": broker, "topic": dataset.live_topic}
    return {"@type": "DataAddress", "type": "File", "path": str(path), "mediaType": dataset.media_type}


def _asset(
    dataset: DemoDataset, path: Path | None, publisher: str, broker: str | None = None
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "dct:title": dataset.title,
        "dct:description": dataset.description,
        "dcat:keyword": list(dataset.keywords),
        "dcat:theme": [{"@id": t} for t in dataset.themes],
        "dct:publisher": publisher,
        "dct:license": CC_BY,
        "dcat:mediaType": dataset.media_type,
        "dct:accrualPeriodicity": {
            "@id": f"http://publications.europa.eu/resource/authority/frequency/{dataset.frequency}"
        },
        "dct:temporal": "2026-11-01/2026-11-14",
        "dct:spatial": "Tessera City",
    }
    if dataset.personal:
        properties["tessera:personal"] = True
        properties["tessera:subjectField"] = dataset.personal[0]
        properties["tessera:consentPurpose"] = dataset.personal[1]
    return {
        "@context": ASSET_CONTEXT,
        "@id": dataset.asset_id,
        "properties": properties,
        "dataAddress": _data_address(dataset, path, broker),
    }


def _purpose_policy(purpose: str) -> dict[str, Any]:
    """Use for one purpose only: what personal data is agreed under (the consent gate requires it)."""
    permission = {
        "action": "use",
        "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose}],
    }
    return {"@context": MANAGEMENT_CONTEXT, "@type": "PolicyDefinition", "@id": f"use-for-{purpose}",
            "policy": {"@type": "Set", "permission": [permission]}}  # fmt: skip


def _contract_definition(dataset: DemoDataset) -> dict[str, Any]:
    return {
        "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
        "@id": f"offer-{dataset.asset_id}",
        "accessPolicyId": f"access-{dataset.asset_id}",
        "contractPolicyId": f"use-for-{dataset.personal[1]}" if dataset.personal else "use-terms",
        "assetsSelector": [{"operandLeft": "id", "operator": "=", "operandRight": dataset.asset_id}],
        "negotiationApproval": "manual" if dataset.personal else "automatic",
    }


def _create(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    if response.status_code == 200:
        return "created"
    if response.status_code == 409:
        return "kept"
    raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")


def seed(settings: ParticipantSettings, broker: str | None = None) -> list[str]:
    """Publish the participant's demo datasets through its management API.

    ``broker`` (``host:port``) is where live datasets' MQTT topics are; a kept live asset is
    updated to it, since the broker may differ from one run to the next.
    """
    assert settings.management_api_key is not None
    files = write_demo_files(settings.data_dir, settings.name)
    done: list[str] = []
    headers = {"X-Api-Key": settings.management_api_key.get_secret_value()}
    with httpx.Client(base_url=settings.public_url, headers=headers, timeout=10.0) as client:
        _create(client, "/management/v3/policydefinitions", _policy("use-terms", None))
        for dataset in DATASETS:
            if dataset.owner != settings.name:
                continue
            _create(
                client,
                "/management/v3/policydefinitions",
                _policy(f"access-{dataset.asset_id}", dataset.admitted),
            )
            if dataset.personal:
                _create(client, "/management/v3/policydefinitions", _purpose_policy(dataset.personal[1]))
            asset = _asset(dataset, files.get(dataset.asset_id), settings.name, broker)
            outcome = _create(client, "/management/v3/assets", asset)
            if outcome == "kept" and dataset.live_topic:
                updated = client.put("/management/v3/assets", json=asset)
                if updated.status_code != 204:
                    raise RuntimeError(f"updating {dataset.asset_id} answered {updated.status_code}")
            _create(client, "/management/v3/contractdefinitions", _contract_definition(dataset))
            done.append(f"{dataset.asset_id} ({outcome})")
    return done


def visible_datasets(consumer: ParticipantSettings, provider: ParticipantSettings) -> list[str]:
    """What ``consumer`` sees in ``provider``'s catalog, asked over DSP through its management API."""
    assert consumer.management_api_key is not None
    body = {
        "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
        "@type": "CatalogRequest",
        "counterPartyId": provider.did,
        "counterPartyAddress": provider.dsp_url,
        "protocol": "dataspace-protocol-http:2025-1",
    }
    response = httpx.post(
        f"{consumer.public_url}/management/v3/catalog/request",
        json=body,
        headers={"X-Api-Key": consumer.management_api_key.get_secret_value()},
        timeout=10.0,
    )
    response.raise_for_status()
    return sorted(d["@id"] for d in response.json().get("dataset", []))
