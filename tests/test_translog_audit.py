"""Audit bundles: exported by the CLI, verified offline, and every kind of tampering caught and named."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.translog import bundle as bundle_module
from connector.translog import merkle
from connector.translog.audit import BundleError, verify_bundle
from connector.translog.bundle import write_bundle
from connector.translog.checkpoint import sign_checkpoint
from connector.translog.note import NoteSigner, parse_note
from connector.translog.witness import Witness, witness_all
from identity.keys import generate_private_key
from tests.conftest import CliResult, Participant
from tests.federated_helpers import InProcessDataspace, trust_each_other
from tests.translog_helpers import (
    append_refusals,
    forget_checkpoints,
    log_signed_agreement,
    rewrite_history,
    rezip,
)

Cli = Callable[..., CliResult]


# "per-entry proofs": a bundle small enough for one inclusion proof per entry; "leaf list only": the
# limit lowered below the bundle's 13 entries, as for a bundle of more than 10,000: only leaves.bin
# (authenticated by the range proof) can name an entry.
@pytest.fixture(params=["per-entry proofs", "leaf list only"])
def audited(
    make_connector: Callable[..., Participant],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Participant, Path]:
    """city's log: refusals and agreements with both signatures, witnessed twice by transit; its bundle."""
    if request.param == "leaf list only":
        monkeypatch.setattr(bundle_module, "INCLUSION_PROOF_LIMIT", 5)
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    space = InProcessDataspace({"city": city, "transit": transit})
    witness = Witness(
        transit.core.engine,
        transit.did,
        transit.core.key,
        space.peer_client("transit"),
        transit.core.metrics.registry,
    )
    append_refusals(city.core.engine, 5)
    log_signed_agreement(city, transit.did, transit.core.key, 1)
    assert asyncio.run(witness_all(witness))[city.did].status == "cosigned"
    append_refusals(city.core.engine, 4, start=5)
    log_signed_agreement(city, transit.did, transit.core.key, 2)
    append_refusals(city.core.engine, 2, start=9)
    assert asyncio.run(witness_all(witness))[city.did].status == "cosigned"
    bundle = tmp_path / "bundle.zip"
    with bundle.open("wb") as out:
        write_bundle(city.core.engine, city.did, city.core.key, 0, 2**62, out)
    return city, bundle


def _failures(path: Path, **options: Any) -> list[str]:
    return verify_bundle(path, **options).failures


def _has_inclusion_proofs(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return "inclusion" in json.loads(zf.read("proofs.json"))


def _named(failures: list[str]) -> list[str]:
    """The entries the failures name ("entry 7 (refusal at ...): ..." -> "entry 7")."""
    return sorted(f.split(":")[0].split(" (")[0] for f in failures if f.startswith("entry "))


def _without_leaves(name: str, data: bytes) -> bytes | None:
    return None if name == "leaves.bin" else data


def _lines_changed(change: Callable[[list[bytes]], list[bytes]]) -> Callable[[str, bytes], bytes]:
    def rewrite(name: str, data: bytes) -> bytes:
        if name != "entries.jsonl":
            return data
        return b"".join(line + b"\n" for line in change(data.splitlines()))

    return rewrite


def test_the_cli_exports_and_verifies_a_bundle(
    make_connector: Callable[..., Participant], tessera_cli: Cli, tmp_path: Path
) -> None:
    city, transit = make_connector("city"), make_connector("transit")
    trust_each_other([city, transit])
    append_refusals(city.core.engine, 3)
    log_signed_agreement(city, transit.did, transit.core.key, 1)
    out = tmp_path / "out.zip"
    exported = tessera_cli(
        "audit", "export", "--dir", str(city.settings.data_dir), "--from", "2020-01-01", "-o", str(out)
    )
    assert exported.code == 0, exported.stderr
    assert "wrote entries 0..3 (4), 1 checkpoint(s) up to size 4 and 1 agreement(s)" in exported.stderr
    verified = tessera_cli("audit", "verify", str(out))
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "VERIFIED" in verified.stdout
    assert "all 4 entries are in checkpoint 4, in this order" in verified.stdout
    assert "1 agreement(s): documents match the log, signatures verify" in verified.stdout
    assert "no witness cosigned it" in verified.stdout
    strict = tessera_cli("audit", "verify", "--require-cosignatures", "1", str(out))
    assert strict.code == 1
    assert "checkpoint 4: 0 witness cosignature(s), 1 required" in strict.stderr
    empty = tessera_cli(
        "audit", "export", "--dir", str(city.settings.data_dir), "--to", "2020-01-01", "-o", str(out)
    )
    assert empty.code == 0, empty.stderr
    assert tessera_cli("audit", "verify", str(out)).code == 0
    bad = tessera_cli(
        "audit", "export", "--dir", str(city.settings.data_dir), "--from", "yesterday", "-o", str(out)
    )
    assert bad.code == 1
    assert "is not a date" in bad.stderr


def test_an_untouched_bundle_verifies_with_its_cosignatures(audited: tuple[Participant, Path]) -> None:
    _city, bundle = audited
    report = verify_bundle(bundle, min_cosignatures=1)
    assert report.ok, report.render()
    assert report.kinds == {"refusal": 11, "agreement.finalized": 2}
    text = report.render()
    assert "checkpoint 6: signed by the log, cosigned by" in text
    assert "checkpoint 13 extends checkpoint 6" in text
    assert "leaves.bin: the 13 leaf hashes rebuild the root of checkpoint 13" in text
    assert "all 13 entries are in checkpoint 13, in this order" in text
    assert ("13 inclusion proof(s) verify against checkpoint 13" in text) == _has_inclusion_proofs(bundle)
    assert not report.warnings, report.warnings


def test_a_modified_entry_is_named(audited: tuple[Participant, Path], tmp_path: Path) -> None:
    _, bundle = audited
    tampered = tmp_path / "t.zip"

    def modify(lines: list[bytes]) -> list[bytes]:
        lines[3] = lines[3].replace(b"refusal number 3", b"refusal number 9")
        return lines

    rezip(bundle, tampered, _lines_changed(modify))
    failures = _failures(tampered)
    assert len(failures) == 1, failures
    assert failures[0].startswith("entry 3 (refusal at "), failures
    assert failures[0].endswith(": does not hash to the log's leaf 3 in checkpoint 13 (modified)")

    # A bundle from before leaves.bin: the entries no longer rebuild the root, and only an
    # inclusion proof (small bundles) names the entry.
    legacy = tmp_path / "legacy.zip"
    rezip(tampered, legacy, _without_leaves)
    failures = _failures(legacy)
    assert any("do not rebuild the root of checkpoint 13" in f for f in failures), failures
    assert _named(failures) == (["entry 3"] if _has_inclusion_proofs(bundle) else [])


def test_a_deleted_entry_is_caught(audited: tuple[Participant, Path], tmp_path: Path) -> None:
    _, bundle = audited
    tampered = tmp_path / "t.zip"
    rezip(bundle, tampered, _lines_changed(lambda lines: lines[:4] + lines[5:]))
    failures = _failures(tampered)
    assert any("holds 12 entries where the manifest says 13" in f for f in failures), failures
    assert "entry 4: missing from the bundle (the log holds it in checkpoint 13; deleted?)" in failures
    assert _named(failures) == ["entry 4"]

    added = tmp_path / "added.zip"
    rezip(bundle, added, _lines_changed(lambda lines: [*lines[:6], lines[2], *lines[6:]]))
    failures = _failures(added)
    assert any("holds 14 entries where the manifest says 13" in f for f in failures), failures
    assert any(
        f.startswith("entries.jsonl line 7 (refusal at ")
        and f.endswith("not in the log before entry 6 (added)")
        for f in failures
    ), failures


def test_two_swapped_entries_are_both_named(audited: tuple[Participant, Path], tmp_path: Path) -> None:
    _, bundle = audited
    tampered = tmp_path / "t.zip"

    def swap(lines: list[bytes]) -> list[bytes]:
        lines[7], lines[8] = lines[8], lines[7]
        return lines

    rezip(bundle, tampered, _lines_changed(swap))
    failures = _failures(tampered)
    assert _named(failures) == ["entry 7", "entry 8"], failures
    assert all("(entries 7 and 8 swapped)" in f for f in failures), failures
    assert any(f.startswith("entry 7 (refusal at ") and "is the log's entry 8" in f for f in failures)

    # Entry 5 is an agreement: moved to index 4, it is named by its id.
    def swap_agreement(lines: list[bytes]) -> list[bytes]:
        lines[4], lines[5] = lines[5], lines[4]
        return lines

    rezip(bundle, tampered, _lines_changed(swap_agreement))
    failures = _failures(tampered)
    assert _named(failures) == ["entry 4", "entry 5"], failures
    assert any(
        f.startswith("entry 4 (agreement.finalized agreementId urn:uuid:") and "is the log's entry 5" in f
        for f in failures
    ), failures


def test_a_truncated_log_is_caught_even_with_a_matching_manifest(
    audited: tuple[Participant, Path], tmp_path: Path
) -> None:
    _, bundle = audited
    tampered = tmp_path / "t.zip"

    def truncate(name: str, data: bytes) -> bytes:
        if name == "entries.jsonl":
            return b"".join(line + b"\n" for line in data.splitlines()[:10])
        if name == "manifest.json":
            manifest = json.loads(data)
            manifest["end"] = 10
            return json.dumps(manifest).encode()
        return data

    rezip(bundle, tampered, truncate)
    failures = _failures(tampered)
    assert any("cannot be proven against checkpoint 13" in f or "do not rebuild" in f for f in failures), (
        failures
    )
    assert "leaves.bin does not hold exactly the 10 leaf hashes of entries 0..9 (more)" in failures
    if _has_inclusion_proofs(bundle):
        assert any(
            f.startswith("entry 10: has an inclusion proof but is not in the bundle") for f in failures
        )

    # leaves.bin cut to match: the range proof (for 0..12) still does not fit the claimed range.
    consistent = tmp_path / "consistent.zip"
    rezip(
        tampered,
        consistent,
        lambda name, data: data[: 10 * merkle.HASH_SIZE] if name == "leaves.bin" else data,
    )
    failures = _failures(consistent)
    assert any(f.startswith("leaves.bin cannot be proven against checkpoint 13") for f in failures), failures

    # Only the entries cut off (the manifest untouched): the missing ones are named.
    cut = tmp_path / "cut.zip"
    rezip(bundle, cut, _lines_changed(lambda lines: lines[:10]))
    failures = _failures(cut)
    assert any("holds 10 entries where the manifest says 13" in f for f in failures), failures
    assert (
        "entries 10..12 (3): missing from the bundle (the log holds them in checkpoint 13; deleted or cut off?)"
        in failures
    )


def test_a_tampered_leaf_list_is_caught(audited: tuple[Participant, Path], tmp_path: Path) -> None:
    _, bundle = audited
    with zipfile.ZipFile(bundle) as zf:
        leaves = bytearray(zf.read("leaves.bin"))
        lines = zf.read("entries.jsonl").splitlines()
    assert len(leaves) == 13 * merkle.HASH_SIZE
    assert bytes(leaves[:32]) == merkle.leaf_hash(lines[0])

    # One listed hash changed: the list no longer rebuilds the root; the entries themselves still do.
    flipped = bytearray(leaves)
    flipped[5 * 32] ^= 1
    tampered = tmp_path / "t.zip"
    rezip(bundle, tampered, lambda name, data: bytes(flipped) if name == "leaves.bin" else data)
    report = verify_bundle(tampered)
    assert report.failures == [
        "the leaf hashes in leaves.bin do not rebuild the root of checkpoint 13: "
        "the list was altered (the entries are checked against the range proof instead)"
    ]
    assert "all 13 entries are in checkpoint 13, in this order" in report.render()

    # An entry modified and its listed hash changed to match: both the list and the entries fail.
    changed = lines[3].replace(b"refusal number 3", b"refusal number 9")
    matching = bytearray(leaves)
    matching[3 * 32 : 4 * 32] = merkle.leaf_hash(changed)

    def both(name: str, data: bytes) -> bytes:
        if name == "leaves.bin":
            return bytes(matching)
        if name == "entries.jsonl":
            return b"".join(line + b"\n" for line in [*lines[:3], changed, *lines[4:]])
        return data

    rezip(bundle, tampered, both)
    failures = _failures(tampered)
    assert any(f.startswith("the leaf hashes in leaves.bin do not rebuild") for f in failures), failures
    assert any("entries 0..12 do not rebuild the root of checkpoint 13" in f for f in failures), failures

    # Too many bytes (a bomb is read only as far as the manifest's range needs).
    rezip(bundle, tampered, lambda name, data: b"\0" * (64 * 1024 * 1024) if name == "leaves.bin" else data)
    failures = _failures(tampered)
    assert "leaves.bin does not hold exactly the 13 leaf hashes of entries 0..12 (more)" in failures


def test_a_bundle_without_a_leaf_list_is_checked_as_before(
    audited: tuple[Participant, Path], tmp_path: Path
) -> None:
    _, bundle = audited
    legacy = tmp_path / "legacy.zip"
    rezip(bundle, legacy, _without_leaves)
    report = verify_bundle(legacy)
    assert report.ok, report.render()
    assert "all 13 entries are in checkpoint 13, in this order" in report.render()
    assert any(w.startswith("no leaves.bin (a bundle from an older exporter)") for w in report.warnings)


def test_a_history_rewritten_and_resigned_is_caught(
    audited: tuple[Participant, Path], tmp_path: Path
) -> None:
    city, bundle = audited
    engine = city.core.engine
    rewrite_history(engine, 2, "this never happened")
    forget_checkpoints(engine)  # the signer would refuse otherwise
    resigned = tmp_path / "resigned.zip"
    with resigned.open("wb") as out:
        write_bundle(engine, city.did, city.core.key, 0, 2**62, out)
    # On its own the re-signed bundle is internally consistent, but no witness cosigned it.
    assert verify_bundle(resigned).ok
    assert _failures(resigned, min_cosignatures=1) == ["checkpoint 13: 0 witness cosignature(s), 1 required"]

    # With the cosigned checkpoint the auditor already holds, the rewrite shows.
    with zipfile.ZipFile(bundle) as old:
        old_checkpoints = json.loads(old.read("checkpoints.json"))
    mixed = tmp_path / "mixed.zip"

    def add_old_checkpoint(name: str, data: bytes) -> bytes:
        if name == "checkpoints.json":
            return json.dumps([old_checkpoints[0], *json.loads(data)]).encode()
        if name == "proofs.json":
            from connector.translog import store
            from connector.translog.routes import b64

            proofs = json.loads(data)
            with engine.connect() as conn:
                proof = [b64(p) for p in store.consistency_proof(conn, 6, 13)]
            proofs["consistency"].append({"first": 6, "second": 13, "proof": proof})
            return json.dumps(proofs).encode()
        return data

    rezip(resigned, mixed, add_old_checkpoint)
    failures = _failures(mixed)
    assert any("checkpoint 13 does not extend checkpoint 6 (history rewritten?)" in f for f in failures), (
        failures
    )


def test_a_forged_checkpoint_is_caught(audited: tuple[Participant, Path], tmp_path: Path) -> None:
    city, bundle = audited
    for forge in ("edit", "other key"):
        tampered = tmp_path / f"{forge}.zip"

        def forged(name: str, data: bytes, forge: str = forge) -> bytes:
            if name != "checkpoints.json":
                return data
            items = json.loads(data)
            note = parse_note(items[-1]["note"])
            if forge == "edit":
                items[-1]["note"] = items[-1]["note"].replace(f"\n{13}\n", f"\n{12}\n", 1)
            else:
                line = NoteSigner(city.did, generate_private_key()).sign(note.text).line()
                items[-1]["note"] = note.text + "\n" + line
            return json.dumps(items).encode()

        rezip(bundle, tampered, forged)
        failures = _failures(tampered)
        expected = "does not verify" if forge == "edit" else "no signature from a known key"
        assert any(f.startswith("checkpoint") and expected in f for f in failures), (forge, failures)


def test_a_tampered_agreement_signature_is_caught(
    audited: tuple[Participant, Path], make_connector: Callable[..., Participant], tmp_path: Path
) -> None:
    city, bundle = audited
    tampered = tmp_path / "t.zip"

    def tamper(name: str, data: bytes) -> bytes:
        if name != "agreements.json":
            return data
        agreements = json.loads(data)
        first = sorted(agreements)[0]
        signature = agreements[first]["consumerSignature"]
        agreements[first]["consumerSignature"] = signature[:-4] + (
            "AAAA" if signature[-4:] != "AAAA" else "BBBB"
        )
        return json.dumps(agreements).encode()

    rezip(bundle, tampered, tamper)
    failures = _failures(tampered)
    assert any("the consumer signature differs from the logged one" in f for f in failures), failures

    # A log that recorded a signature made by the wrong key: the bundle is consistent, the signature is not.
    transit_did = next(iter(json.loads(zipfile.ZipFile(bundle).read("keys.json")).keys() - {city.did}))
    log_signed_agreement(city, transit_did, None, 3, forge=True)
    fresh = tmp_path / "fresh.zip"
    with fresh.open("wb") as out:
        write_bundle(city.core.engine, city.did, city.core.key, 0, 2**62, out)
    failures = _failures(fresh)
    assert len(failures) == 1
    assert failures[0].startswith("entry 13 (agreement.finalized): agreement urn:uuid:")
    assert "the consumer's signature does not verify" in failures[0]


def _zip(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_malformed_bundles_and_zip_bombs_get_clear_errors(
    audited: tuple[Participant, Path], tmp_path: Path
) -> None:
    _, bundle = audited
    with zipfile.ZipFile(bundle) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    cases: list[tuple[Any, str]] = [
        (io.BytesIO(b"not a zip at all"), "not a zip file"),
        (_zip({k: v for k, v in members.items() if k != "keys.json"}), "the bundle has no keys.json"),
        (_zip({**members, "manifest.json": b"{"}), "manifest.json is not JSON"),
        (_zip({**members, "manifest.json": b" " * (50 * 1024 * 1024)}), "manifest.json is 52428800 bytes"),
        (_zip({**members, "proofs.json": b"[" * 100_000}), "proofs.json is not JSON"),
        (_zip({**members, "entries.jsonl": b"x" * (200 * 1024)}), "entry 0 is longer than"),
        (_zip({**members, **{f"extra{i}": b"" for i in range(20)}}), "more than 16 files"),
        (_zip({**members, "keys.json": b"{}"}), "keys.json has no key for the log"),
    ]
    for source, message in cases:
        with pytest.raises(BundleError, match=message):
            verify_bundle(source)
    # A bomb whose header lies about its size: reading stops at the cap all the same.
    buffer = _zip({**members, "manifest.json": b" " * (50 * 1024 * 1024)})
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("manifest.json")
    lying = _lie_about_size(raw, "manifest.json", info.file_size, 100)
    with pytest.raises(BundleError):
        verify_bundle(io.BytesIO(lying))


def _lie_about_size(raw: bytearray, name: str, real: int, claimed: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in both zip headers."""
    real_bytes, claimed_bytes = real.to_bytes(4, "little"), claimed.to_bytes(4, "little")
    return bytes(
        raw.replace(
            real_bytes + len(name).to_bytes(2, "little"), claimed_bytes + len(name).to_bytes(2, "little")
        )
    )


def test_export_after_a_signer_refusal_is_a_clear_error(
    audited: tuple[Participant, Path], tmp_path: Path
) -> None:
    city, _ = audited
    rewrite_history(city.core.engine, 0, "quietly changed")
    from connector.translog.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="refusing to sign"):
        sign_checkpoint(city.core.engine, city.did, city.core.key)
