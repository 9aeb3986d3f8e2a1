"""Transfer evidence in one connector's database (SQLite and PostgreSQL): atomic entries, receipts, bundles.

- A state change and its log entry commit together: an entry the log refuses leaves the
  transfer's state unchanged, and a state change is never committed without its entry.
- The provider checks the consumer's receipt with the consumer's pinned key: a tampered one
  is refused and logged as a refusal, a genuine one is logged.
- ``tessera audit verify`` checks every receipt's signature and names a tampered one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from catalog.assets import now_millis
from connector.transfer_models import TransferRow
from connector.transfer_receipts import _settle_statement
from connector.transfer_states import Message
from connector.transfers import receive
from connector.translog import bundle as bundle_module
from connector.translog import store
from connector.translog.audit import verify_bundle
from connector.translog.bundle import write_bundle
from connector.translog.entries import EntryError
from connector.translog.receipts import TRANSFER_RECEIPT, sign_facts
from tests.conftest import CliResult, Participant
from tests.federated_helpers import trust_each_other
from tests.translog_helpers import rezip

SHA = "ab" * 32


def _row(
    provider: Participant, consumer_did: str, *, asset_id: str = "bike-counts", state: str
) -> TransferRow:
    return TransferRow(
        id=str(uuid.uuid4()),
        role="provider",
        provider_pid=f"urn:uuid:{uuid.uuid4()}",
        consumer_pid=f"urn:uuid:{uuid.uuid4()}",
        counter_party_did=consumer_did,
        counter_party_address="http://127.0.0.1:1/dsp/2025-1",
        state=state,
        agreement_id=f"urn:uuid:{uuid.uuid4()}",
        asset_id=asset_id,
        transfer_type="HttpData-PULL",
        bytes_transferred=42,
        payload_sha256=SHA,
        records=3,
        created_at=now_millis(),
        updated_at=now_millis(),
    )


def _stored(participant: Participant, row: TransferRow) -> str:
    with Session(participant.core.engine) as session:
        session.add(row)
        session.commit()
        return row.id


def _log(participant: Participant) -> list[dict[str, Any]]:
    with Session(participant.core.engine) as session:
        size, _ = store.tree_head(session)
        return [json.loads(item.entry) for item in store.read_entries(session, 0, size)]


def _facts(row: TransferRow, provider: str, statement: str = "completed") -> dict[str, Any]:
    return {
        "statement": statement,
        "agreementId": row.agreement_id,
        "dataset": row.asset_id,
        "provider": provider,
        "consumer": row.counter_party_did,
        "providerPid": row.provider_pid,
        "consumerPid": row.consumer_pid,
        "bytes": row.bytes_transferred,
        "payloadSha256": SHA,
        "records": row.records,
    }


def test_a_state_change_and_its_entry_commit_together(
    make_connector: Callable[..., Participant], database_url: str
) -> None:
    city = make_connector("city", database_url)
    consumer = "did:web:transit.example"
    good = _stored(city, _row(city, consumer, state="STARTED"))
    # A dataset id the log refuses (a control character): the entry cannot be written.
    bad = _stored(city, _row(city, consumer, asset_id="bike\x01counts", state="STARTED"))
    suspension = {"code": "operator", "reason": ["maintenance, call +49 30 1234567"]}

    with Session(city.core.engine) as session:
        row = session.get(TransferRow, bad)
        assert row is not None
        with pytest.raises(EntryError):
            receive(session, city.core, row, Message.SUSPENSION, suspension)
        session.rollback()
    with Session(city.core.engine) as session:
        assert session.get(TransferRow, bad).state == "STARTED"  # type: ignore[union-attr]
    assert _log(city) == []

    with Session(city.core.engine) as session:
        row = session.get(TransferRow, good)
        assert row is not None
        receive(session, city.core, row, Message.SUSPENSION, suspension)
    with Session(city.core.engine) as session:
        assert session.get(TransferRow, good).state == "SUSPENDED"  # type: ignore[union-attr]
    [entry] = _log(city)
    assert entry["kind"] == "transfer.suspended"
    assert (entry["transferId"], entry["counterParty"], entry["bytes"], entry["payloadSha256"]) == (
        good,
        consumer,
        42,
        SHA,
    )
    # The counter-party's reason is logged, its phone number masked: no personal data in clear.
    assert "maintenance" in entry["reason"]
    assert "1234567" not in entry["reason"]


def test_the_provider_logs_a_genuine_receipt_and_refuses_a_tampered_one(
    make_connector: Callable[..., Participant],
) -> None:
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    row = _row(city, transit.did, state="COMPLETED")
    facts = _facts(row, city.did)
    row.statements_outbox = json.dumps([{**facts, "provider": ""}, {**facts, "provider": ""}])
    transfer_id = _stored(city, row)

    tampered = sign_facts({**facts, "bytes": 1}, transit.core.key, transit.did)
    _settle_statement(city.core, transfer_id, facts, "receipt", {"signature": tampered})
    genuine = sign_facts(facts, transit.core.key, transit.did)
    _settle_statement(city.core, transfer_id, facts, "receipt", {"signature": genuine})

    refusal, receipt = _log(city)
    assert (refusal["kind"], refusal["code"], refusal["counterParty"]) == (
        "refusal",
        "receipt.signature",
        transit.did,
    )
    assert "does not match these facts" in refusal["reason"]
    assert (receipt["kind"], receipt["signedBy"], receipt["signature"]) == (
        TRANSFER_RECEIPT,
        transit.did,
        genuine,
    )
    with Session(city.core.engine) as session:
        assert session.get(TransferRow, transfer_id).statements_outbox is None  # type: ignore[union-attr]


def test_audit_verify_checks_receipt_signatures_and_names_a_tampered_one(
    make_connector: Callable[..., Participant],
    tessera_cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    honest = _row(city, transit.did, state="COMPLETED")
    facts = _facts(honest, city.did)
    with Session(city.core.engine) as session:
        for signature in (
            sign_facts(facts, transit.core.key, transit.did),
            # What a provider could try: a receipt "signed" over other numbers than it logs.
            sign_facts({**facts, "bytes": 7}, transit.core.key, transit.did),
        ):
            fields = {
                **facts,
                "transferId": honest.id,
                "role": "provider",
                "counterParty": transit.did,
                "signedBy": transit.did,
                "signature": signature,
            }
            store.append_entry(session, TRANSFER_RECEIPT, fields)
        session.commit()
    bundle = tmp_path / "bundle.zip"
    exported = tessera_cli(
        "audit", "export", "--dir", str(city.settings.data_dir), "--from", "2020-01-01", "-o", str(bundle)
    )
    assert exported.code == 0, exported.stderr
    verified = tessera_cli("audit", "verify", str(bundle))
    assert verified.code == 1
    assert "entry 1 (transfer.receipt): the signature of " + transit.did in verified.stderr
    assert "does not verify" in verified.stderr
    report = verify_bundle(bundle)
    assert len(report.failures) == 1, report.failures
    assert "1 transfer receipt(s): the counter-party's signatures verify" in report.render()

    # A bundle with no per-entry inclusion proofs (as past 10,000 entries): the honest receipt
    # with its signature altered is named, as not verifying and as not the log's entry 0.
    monkeypatch.setattr(bundle_module, "INCLUSION_PROOF_LIMIT", 0)
    large = tmp_path / "large.zip"
    with large.open("wb") as out:
        write_bundle(city.core.engine, city.did, city.core.key, 0, 2**62, out)
    tampered = tmp_path / "tampered.zip"

    def swap_signature(name: str, data: bytes) -> bytes:
        if name != "entries.jsonl":
            return data
        first, second = (json.loads(line) for line in data.splitlines())
        signature = first["signature"]
        first["signature"] = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
        return b"".join(
            json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n" for e in (first, second)
        )

    rezip(large, tampered, swap_signature)
    failures = verify_bundle(tampered).failures
    assert any(
        f.startswith("entry 0 (transfer.receipt): the signature of " + transit.did) for f in failures
    ), failures
    assert (
        f"entry 0 (transfer.receipt transferId {honest.id}): does not hash to the log's leaf 0 in checkpoint 2 (modified)"
        in failures
    )
