"""Verifying an audit bundle offline: nothing but the bundle, no network, no database.

Checks, in order: the zip is a bundle of sane size (every member's size is capped and
reading stops at the cap, so a zip bomb costs nothing); every checkpoint note carries the
log's valid signature (key name = origin) and every cosignature by a key in ``keys.json``
verifies; consecutive checkpoints are consistent; every entry is canonical JSON (RFC 8785)
of a known shape; the log's leaf hashes (``leaves.bin``), with the range proof, rebuild the
newest checkpoint's root, which authenticates that list, and each entry hashes to the listed
hash at its index (so a modified, missing, added or swapped entry is named, whatever the
bundle's size); the inclusion proofs, when the bundle has them, verify; every finalized
agreement's document hashes to what the entry says and both signatures verify with the
parties' keys.

A bundle without ``leaves.bin`` (from an exporter before it) is checked as before: the entries
themselves must rebuild the root with the range proof, and only the per-entry inclusion proofs
(bundles of at most 10,000 entries) name the entry that fails. A ``leaves.bin`` that does not
authenticate is a failure of its own, and the entries are then checked that older way.

``verify_bundle`` returns a ``Report``: what passed, what failed (naming entries and
checkpoints), and warnings (e.g. a checkpoint no witness cosigned). ``BundleError`` is a
bundle that cannot be read at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

import rfc8785

from connector.translog import merkle
from connector.translog.bundle import BUNDLE_TYPE
from connector.translog.checkpoint import (
    Checkpoint,
    CheckpointError,
    log_verifier,
    parse_checkpoint,
    witness_verifier,
)
from connector.translog.entries import AGREEMENT_FINALIZED, KINDS, EntryError, check_fields
from connector.translog.note import NoteError, Verifier, open_note, parse_note, verifier_key_string
from connector.translog.receipts import TRANSFER_RECEIPT, facts_of_entry, verify_facts
from contracts.signing import SignatureError, canonical_form, verify_agreement_signature
from identity.errors import KeyFileError
from identity.keys import public_key_from_jwk

MAX_MEMBERS = 16
LIMITS = {  # bytes, uncompressed
    "manifest.json": 64 * 1024,
    "entries.jsonl": 4 * 1024**3,
    "checkpoints.json": 64 * 1024 * 1024,
    "proofs.json": 2 * 1024**3,
    "agreements.json": 512 * 1024 * 1024,
    "keys.json": 16 * 1024 * 1024,
}
MAX_ENTRY_LINE = 64 * 1024 + 1
MAX_BUNDLE_ENTRIES = 10_000_000  # 2 x 320 MB of leaf hashes (the entries' and the listed) held while checking
LIMITS["leaves.bin"] = MAX_BUNDLE_ENTRIES * merkle.HASH_SIZE
MAX_NAMED_FAILURES = 50
# How far ahead a missing or added entry is looked for before a difference is called a modification.
ALIGN_WINDOW = 16


class BundleError(ValueError):
    """The file is not a readable bundle (not a zip, a member missing or too large, bad JSON)."""


@dataclass
class Report:
    origin: str = ""
    start: int = 0
    end: int = 0
    tree_size: int = 0
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        if len(self.failures) < MAX_NAMED_FAILURES:
            self.failures.append(message)
        elif len(self.failures) == MAX_NAMED_FAILURES:
            self.failures.append("... (more failures not listed)")

    def render(self) -> str:
        lines = [
            f"bundle of {self.origin}: entries {self.start}..{self.end - 1} ({self.end - self.start}), "
            f"newest checkpoint {self.tree_size}",
        ]
        if self.kinds:
            lines.append("  kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())))
        lines += [f"  ok    {p}" for p in self.passed]
        lines += [f"  WARN  {w}" for w in self.warnings]
        lines += [f"  FAIL  {f}" for f in self.failures]
        lines.append("VERIFIED" if self.ok else f"FAILED: {len(self.failures)} problem(s)")
        return "\n".join(lines)


def _read_member(zf: zipfile.ZipFile, name: str) -> _Capped:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BundleError(f"the bundle has no {name}") from None
    if info.file_size > LIMITS[name]:
        raise BundleError(f"{name} is {info.file_size} bytes; at most {LIMITS[name]} are read")
    return _Capped(zf.open(info), LIMITS[name], name)


class _Capped:
    """A member's stream that stops at its cap, whatever sizes the zip headers claim."""

    def __init__(self, stream: IO[bytes], cap: int, name: str) -> None:
        self.stream, self.cap, self.name, self.read_so_far = stream, cap, name, 0

    def _count(self, data: bytes) -> bytes:
        self.read_so_far += len(data)
        if self.read_so_far > self.cap:
            raise BundleError(f"{self.name} is larger than {self.cap} bytes")
        return data

    def read(self, n: int = -1) -> bytes:
        return self._count(self.stream.read(self.cap + 1 - self.read_so_far if n < 0 else n))

    def readline(self, limit: int = -1) -> bytes:
        return self._count(self.stream.readline(limit))

    def close(self) -> None:
        self.stream.close()


def _json(zf: zipfile.ZipFile, name: str) -> Any:
    stream = _read_member(zf, name)
    try:
        return json.loads(stream.read())
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{name} is damaged: {exc}") from None
    except (ValueError, RecursionError):
        raise BundleError(f"{name} is not JSON") from None
    finally:
        stream.close()


def _b64_list(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 256:
        raise BundleError(f"{what} is not a list of base64 hashes")
    try:
        return [base64.b64decode(p, validate=True) for p in value]
    except (binascii.Error, ValueError, TypeError):
        raise BundleError(f"{what} holds something that is not base64") from None


def _count_of(manifest: dict[str, Any], key: str) -> int:
    value = manifest.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise BundleError(f"manifest.json: {key} is not a whole number")
    return value


def _verifiers(keys: Any, origin: str) -> tuple[Verifier, list[Verifier], dict[str, Any]]:
    if not isinstance(keys, dict) or origin not in keys:
        raise BundleError(f"keys.json has no key for the log {origin}")
    jwks: dict[str, Any] = {}
    witnesses: list[Verifier] = []
    for did, item in keys.items():
        try:
            public = public_key_from_jwk(item.get("publicKeyJwk") if isinstance(item, dict) else None)
        except KeyFileError as exc:
            raise BundleError(f"keys.json: the key of {did} is not usable: {exc}") from None
        jwks[did] = item["publicKeyJwk"]
        if did != origin:
            witnesses.append(witness_verifier(did, public))
    return log_verifier(origin, public_key_from_jwk(jwks[origin])), witnesses, jwks


def _vkey(verifier: Verifier) -> str:
    return verifier_key_string(verifier.name, verifier.kind, verifier.public_key)


def _check_checkpoints(
    raw: Any, origin: str, log_key: Verifier, witnesses: list[Verifier], report: Report, min_cosignatures: int
) -> list[Checkpoint]:
    if not isinstance(raw, list) or not raw:
        raise BundleError("checkpoints.json is not a non-empty list")
    good: list[Checkpoint] = []
    for position, item in enumerate(raw):
        note_text = item.get("note") if isinstance(item, dict) else None
        if not isinstance(note_text, str):
            raise BundleError(f"checkpoints.json item {position} has no note")
        try:
            note = parse_note(note_text)
            checkpoint = parse_checkpoint(note.text)
        except (NoteError, CheckpointError) as exc:
            report.fail(f"checkpoint #{position}: malformed: {exc}")
            continue
        label = f"checkpoint {checkpoint.size}"
        if checkpoint.origin != origin:
            report.fail(f"{label}: origin {checkpoint.origin} is not the log's ({origin})")
            continue
        try:
            opened = open_note(note, [log_key, *witnesses])
        except NoteError as exc:
            report.fail(f"{label}: {exc}")
            continue
        if origin not in opened.verified_by:
            report.fail(f"{label}: not signed by the log's key ({origin})")
            continue
        cosigners = sorted(opened.cosigned_at)
        if len(cosigners) < min_cosignatures:
            report.fail(f"{label}: {len(cosigners)} witness cosignature(s), {min_cosignatures} required")
        elif not cosigners:
            report.warnings.append(f"{label}: no witness cosigned it (the log's own word only)")
        report.passed.append(
            f"{label}: signed by the log" + (f", cosigned by {', '.join(cosigners)}" if cosigners else "")
        )
        if good and checkpoint.size <= good[-1].size:
            report.fail(f"{label}: checkpoints are not in ascending size order")
            continue
        good.append(checkpoint)
    return good


def _check_consistency(checkpoints: list[Checkpoint], proofs: Any, report: Report) -> None:
    given: dict[tuple[int, int], list[bytes]] = {}
    for item in proofs if isinstance(proofs, list) else []:
        if (
            isinstance(item, dict)
            and isinstance(item.get("first"), int)
            and isinstance(item.get("second"), int)
        ):
            given[(item["first"], item["second"])] = _b64_list(item.get("proof"), "a consistency proof")
    for a, b in itertools.pairwise(checkpoints):
        proof = given.get((a.size, b.size))
        if proof is None:
            report.fail(f"no consistency proof from checkpoint {a.size} to {b.size}")
            continue
        try:
            merkle.verify_consistency(a.size, b.size, proof, a.root, b.root)
            report.passed.append(f"checkpoint {b.size} extends checkpoint {a.size}")
        except merkle.ProofError as exc:
            report.fail(
                f"checkpoint {b.size} does not extend checkpoint {a.size} (history rewritten?): {exc}"
            )


class _Fractions(threading.local):
    """How many numbers with a fraction or exponent the last entry held (set by the decoder)."""

    seen = 0


_FRACTIONS = _Fractions()


def _note_fraction(text: str) -> float:
    _FRACTIONS.seen += 1
    return float(text)


# One decoder and one encoder for every line: building them per call cost more than the work.
_DECODER = json.JSONDecoder(parse_float=_note_fraction)
_SORTED_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _is_canonical(entry: Any, line: bytes, has_fractions: bool) -> bool:
    """Is ``line`` the RFC 8785 form of ``entry``?

    For ASCII text without fractions, RFC 8785 and the standard library's sorted, compact JSON
    write the same bytes (same escapes, same key order), and the C encoder is much faster; any
    other line is checked with the full canonicaliser.
    """
    if line.isascii() and not has_fractions:
        return _SORTED_COMPACT.encode(entry).encode() == line
    return bool(rfc8785.dumps(entry) == line)


def _entry_problem(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    _FRACTIONS.seen = 0
    try:
        entry = _DECODER.decode(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, "not JSON"
    has_fractions = _FRACTIONS.seen > 0
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    try:
        if not _is_canonical(entry, line, has_fractions):
            return entry, "not in canonical form (RFC 8785)"
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        return entry, f"cannot be canonicalised: {exc}"
    spec = KINDS.get(entry.get("kind", ""))
    if spec is None:
        return entry, None  # a kind this version does not know: hashed and proven, not interpreted
    try:
        check_fields(
            {k: v for k, v in entry.items() if k not in ("kind", "time")}, spec.fields, spec.required
        )
    except EntryError as exc:
        return entry, str(exc)
    return entry, None


def _check_agreement(entry: dict[str, Any], agreements: dict[str, Any], jwks: dict[str, Any]) -> str | None:
    agreement_id = entry.get("agreementId")
    item = agreements.get(agreement_id) if isinstance(agreement_id, str) else None
    if not isinstance(item, dict) or not isinstance(item.get("agreement"), dict):
        return f"agreement {agreement_id} is not in the bundle"
    try:
        digest = hashlib.sha256(canonical_form(item["agreement"])).hexdigest()
    except SignatureError as exc:
        return f"agreement {agreement_id}: {exc}"
    if digest != entry.get("agreementSha256"):
        return f"agreement {agreement_id}: the document does not hash to the logged agreementSha256"
    for role, party in (("provider", entry.get("provider")), ("consumer", entry.get("consumer"))):
        logged = entry.get(f"{role}Signature")
        if item.get(f"{role}Signature") != logged:
            return f"agreement {agreement_id}: the {role} signature differs from the logged one"
        if logged is None:
            continue
        jwk = jwks.get(party) if isinstance(party, str) else None
        if jwk is None:
            return f"agreement {agreement_id}: no key for the {role} {party}"
        try:
            verify_agreement_signature(item["agreement"], logged, jwk, expected_kid_did=party)
        except SignatureError as exc:
            return f"agreement {agreement_id}: the {role}'s signature does not verify: {exc}"
    return None


def verify_bundle(path: Path | IO[bytes], *, min_cosignatures: int = 0) -> Report:
    """Check everything in the bundle; BundleError when it cannot be read at all."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"not a zip file: {exc}") from None
    with zf:
        if len(zf.infolist()) > MAX_MEMBERS:
            raise BundleError(f"the bundle has more than {MAX_MEMBERS} files")
        try:
            return _verify(zf, min_cosignatures)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise BundleError(f"the zip is damaged: {exc}") from None


def _verify(zf: zipfile.ZipFile, min_cosignatures: int) -> Report:
    manifest = _json(zf, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("type") != BUNDLE_TYPE:
        raise BundleError(f"manifest.json is not a {BUNDLE_TYPE} manifest")
    origin = manifest.get("origin")
    if not isinstance(origin, str):
        raise BundleError("manifest.json names no origin")
    report = Report(
        origin, _count_of(manifest, "start"), _count_of(manifest, "end"), _count_of(manifest, "treeSize")
    )
    if not report.start <= report.end <= report.tree_size:
        raise BundleError("manifest.json: the entry range does not fit the tree size")
    if report.end - report.start > MAX_BUNDLE_ENTRIES:
        raise BundleError(f"the bundle claims more than {MAX_BUNDLE_ENTRIES} entries; export smaller ranges")
    log_key, witnesses, jwks = _verifiers(_json(zf, "keys.json"), origin)
    # The bundle names the keys; whether they are the parties' is for the auditor to compare.
    report.passed.append(f"log key (compare with {origin}'s DID document): {_vkey(log_key)}")
    checkpoints = _check_checkpoints(
        _json(zf, "checkpoints.json"), origin, log_key, witnesses, report, min_cosignatures
    )
    proofs = _json(zf, "proofs.json")
    if not isinstance(proofs, dict):
        raise BundleError("proofs.json is not an object")
    _check_consistency(checkpoints, proofs.get("consistency"), report)
    newest = checkpoints[-1] if checkpoints else None
    if newest is None or newest.size != report.tree_size:
        report.fail(f"no valid checkpoint of size {report.tree_size} (the size the manifest names)")
    agreements = _json(zf, "agreements.json")
    if not isinstance(agreements, dict):
        raise BundleError("agreements.json is not an object")

    listed = _listed_leaves(zf, report)
    found, agreement_count = _check_entries(zf, report, agreements, jwks)
    proven: _Hashes | None = None  # the log's leaf hashes, once authenticated by the newest root
    if newest is not None and newest.size == report.tree_size:
        if listed is not None and _authenticated(report, listed, proofs, newest):
            proven = listed
            _compare(zf, report, found, listed, newest)
        elif len(found) == report.end - report.start:
            _check_range(report, found, proofs, newest)
    if newest is not None and isinstance(proofs.get("inclusion"), list):
        _check_inclusions(report, found if proven is None else proven, proofs["inclusion"], newest)
    if agreement_count:
        report.passed.append(f"{agreement_count} agreement(s): documents match the log, signatures verify")
    return report


@dataclass
class _ReceiptCount:
    checked: int = 0
    failed: int = 0


def _check_receipt(entry: dict[str, Any], jwks: dict[str, Any]) -> str | None:
    """A counter-party's signature over the transfer facts the entry holds."""
    signer = entry.get("signedBy")
    if signer != entry.get("counterParty"):
        return f"the receipt is signed by {signer}, not by the counter-party {entry.get('counterParty')}"
    jwk = jwks.get(str(signer))
    if jwk is None:
        return f"no key for {signer} in keys.json: its signature cannot be checked"
    try:
        verify_facts(facts_of_entry(entry), str(entry.get("signature")), str(signer), jwk)
    except SignatureError as exc:
        return f"the signature of {signer} does not verify: {exc}"
    return None


def _check_entries(
    zf: zipfile.ZipFile, report: Report, agreements: dict[str, Any], jwks: dict[str, Any]
) -> tuple[_Hashes, int]:
    """Check each entry on its own; return the leaf hashes of the lines, in file order."""
    hashes = bytearray()
    count = 0
    agreement_count = 0
    receipts = _ReceiptCount()
    expected = report.end - report.start
    stream = _read_member(zf, "entries.jsonl")
    try:
        while True:
            line = stream.readline(MAX_ENTRY_LINE)
            if not line:
                break
            index = report.start + count
            if count > expected:
                report.fail(f"entries.jsonl holds more than the {expected} entries the manifest names")
                break
            if not line.endswith(b"\n"):
                if len(line) >= MAX_ENTRY_LINE:
                    raise BundleError(f"entry {index} is longer than {MAX_ENTRY_LINE - 1} bytes")
                report.fail(f"entry {index}: the last line has no newline (truncated file?)")
            data = line.rstrip(b"\n")
            hashes += merkle.leaf_hash(data)
            count += 1
            entry, problem = _entry_problem(data)
            kind = str(entry.get("kind")) if entry else "?"
            report.kinds[kind] += 1
            if problem:
                report.fail(f"entry {index} ({kind}): {problem}")
            elif entry and kind == AGREEMENT_FINALIZED:
                agreement_count += 1
                trouble = _check_agreement(entry, agreements, jwks)
                if trouble:
                    agreement_count -= 1
                    report.fail(f"entry {index} ({kind}): {trouble}")
            elif entry and kind == TRANSFER_RECEIPT:
                trouble = _check_receipt(entry, jwks)
                receipts.checked += 1
                if trouble:
                    receipts.failed += 1
                    report.fail(f"entry {index} ({kind}): {trouble}")
    finally:
        stream.close()
    if receipts.checked > receipts.failed:
        good = receipts.checked - receipts.failed
        report.passed.append(f"{good} transfer receipt(s): the counter-party's signatures verify")
    if count != expected:
        report.fail(
            f"the bundle holds {count} entries where the manifest says {expected} "
            f"(entries {report.start}..{report.end - 1}): entries were deleted or added"
        )
    return _Hashes(bytes(hashes)), agreement_count


def _check_range(report: Report, leaves: _Hashes, proofs: dict[str, Any], newest: Checkpoint) -> None:
    if report.end == report.start:
        return
    try:
        rebuilt = merkle.root_from_range(
            report.start, report.end, newest.size, leaves, _b64_list(proofs.get("range"), "the range proof")
        )
    except merkle.ProofError as exc:
        report.fail(f"the entries cannot be proven against checkpoint {newest.size}: {exc}")
        return
    if rebuilt != newest.root:
        report.fail(
            f"entries {report.start}..{report.end - 1} do not rebuild the root of checkpoint {newest.size}: "
            "an entry was modified, removed, added or reordered"
        )
    else:
        report.passed.append(f"all {len(leaves)} entries are in checkpoint {newest.size}, in this order")


def _check_inclusions(report: Report, leaves: _Hashes, items: list[Any], newest: Checkpoint) -> None:
    failed = 0
    checked = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("index"), int):
            raise BundleError("proofs.json: an inclusion proof has no index")
        index = item["index"]
        position = index - report.start
        if not 0 <= position < len(leaves):
            report.fail(f"entry {index}: has an inclusion proof but is not in the bundle")
            failed += 1
            continue
        try:
            merkle.verify_inclusion(
                leaves[position],
                index,
                newest.size,
                _b64_list(item.get("proof"), "an inclusion proof"),
                newest.root,
            )
            checked += 1
        except merkle.ProofError as exc:
            failed += 1
            report.fail(f"entry {index}: its inclusion proof in checkpoint {newest.size} fails: {exc}")
    if not failed:
        report.passed.append(f"{checked} inclusion proof(s) verify against checkpoint {newest.size}")


class _Hashes(Sequence[bytes]):
    """32-byte hashes packed in one ``bytes``: less than half the memory of a list of them."""

    def __init__(self, data: bytes, first: int = 0, count: int | None = None) -> None:
        self.data, self.first = data, first
        self.length = len(data) // merkle.HASH_SIZE - first if count is None else count

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, key: int) -> bytes: ...
    @overload
    def __getitem__(self, key: slice) -> _Hashes: ...
    def __getitem__(self, key: int | slice) -> bytes | _Hashes:
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.length)
            if step != 1:
                raise ValueError("only contiguous slices")
            return _Hashes(self.data, self.first + lo, max(0, hi - lo))
        if not 0 <= key < self.length:
            raise IndexError(key)
        at = (self.first + key) * merkle.HASH_SIZE
        return self.data[at : at + merkle.HASH_SIZE]

    def __iter__(self) -> Iterator[bytes]:
        data, size = self.data, merkle.HASH_SIZE
        for at in range(self.first * size, (self.first + self.length) * size, size):
            yield data[at : at + size]


def _listed_leaves(zf: zipfile.ZipFile, report: Report) -> _Hashes | None:
    """The log's leaf hashes the bundle lists (not yet authenticated), or None without them."""
    if "leaves.bin" not in zf.namelist():
        report.warnings.append(
            "no leaves.bin (a bundle from an older exporter): an entry that fails is named only "
            "by its inclusion proof, which bundles of more than 10,000 entries do not carry"
        )
        return None
    expected = (report.end - report.start) * merkle.HASH_SIZE
    stream = _read_member(zf, "leaves.bin")
    try:
        data = stream.read(expected + 1)  # never more than the manifest's range needs
    finally:
        stream.close()
    if len(data) != expected:
        report.fail(
            f"leaves.bin does not hold exactly the {report.end - report.start} leaf hashes of entries "
            f"{report.start}..{report.end - 1} ({'more' if len(data) > expected else f'{len(data)} bytes'})"
        )
        return None
    return _Hashes(data)


def _authenticated(report: Report, listed: _Hashes, proofs: dict[str, Any], newest: Checkpoint) -> bool:
    """Do the listed leaf hashes, with the range proof, rebuild the newest checkpoint's root?"""
    if report.end == report.start:
        return True
    try:
        rebuilt = merkle.root_from_range(
            report.start, report.end, newest.size, listed, _b64_list(proofs.get("range"), "the range proof")
        )
    except merkle.ProofError as exc:
        report.fail(f"leaves.bin cannot be proven against checkpoint {newest.size}: {exc}")
        return False
    if rebuilt != newest.root:
        report.fail(
            f"the leaf hashes in leaves.bin do not rebuild the root of checkpoint {newest.size}: "
            "the list was altered (the entries are checked against the range proof instead)"
        )
        return False
    report.passed.append(
        f"leaves.bin: the {len(listed)} leaf hashes rebuild the root of checkpoint {newest.size}"
    )
    return True


@dataclass(frozen=True)
class _Difference:
    """Where the bundle's entries part from the log's: ``at`` indexes the log, ``line`` the file."""

    what: str  # modified, swapped, missing, added
    at: int
    line: int
    count: int = 1


def _same_run(a: bytes, i: int, b: bytes, p: int) -> int:
    """How many hashes from a[i] and b[p] on are equal: chunks that double, then halve (memcmp speed)."""
    h = merkle.HASH_SIZE
    most = min(len(a) // h - i, len(b) // h - p)

    def equal(lo: int, hi: int) -> bool:  # hashes [lo, hi) of the run
        return a[(i + lo) * h : (i + hi) * h] == b[(p + lo) * h : (p + hi) * h]

    good, step = 0, 1
    while good < most and equal(good, min(good + step, most)):
        good, step = min(good + step, most), step * 2
    while step > 1 and good < most:
        step //= 2
        if good + step <= most and equal(good, good + step):
            good += step
    return good


def _differences(found: _Hashes, listed: _Hashes) -> list[_Difference]:
    """Align the entries' hashes with the log's: swaps, then gaps and insertions within a window."""
    out: list[_Difference] = []
    i = p = 0
    nf, nl = len(found), len(listed)
    while i < nf and p < nl and len(out) <= MAX_NAMED_FAILURES:
        run = _same_run(found.data, i, listed.data, p)
        i, p = i + run, p + run
        if i >= nf or p >= nl:
            break
        here = found[i]
        if i + 1 < nf and p + 1 < nl and here == listed[p + 1] and found[i + 1] == listed[p]:
            out.append(_Difference("swapped", p, i, 2))
            i, p = i + 2, p + 2
            continue
        gap = next((k for k in range(1, ALIGN_WINDOW + 1) if p + k < nl and here == listed[p + k]), 0)
        if gap:
            out.append(_Difference("missing", p, i, gap))
            p += gap
            continue
        extra = next((k for k in range(1, ALIGN_WINDOW + 1) if i + k < nf and found[i + k] == listed[p]), 0)
        if extra:
            out.append(_Difference("added", p, i, extra))
            i += extra
            continue
        out.append(_Difference("modified", p, i))
        i, p = i + 1, p + 1
    if len(out) <= MAX_NAMED_FAILURES:
        if p < nl:
            out.append(_Difference("missing", p, i, nl - p))
        if i < nf:
            out.append(_Difference("added", p, i, nf - i))
    return out


_ID_FIELDS = ("transferId", "agreementId", "negotiationId", "member")


def _describe(line: bytes) -> str:
    """What an entry line says it is: its kind and an id (or its time), for a person to find it."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(entry, dict):
        return "not a JSON object"
    kind = entry.get("kind")
    label = kind[:64] if isinstance(kind, str) else "?"
    for name in _ID_FIELDS:
        value = entry.get(name)
        if isinstance(value, str):
            return f"{label} {name} {value[:200]}"
    moment = entry.get("time")
    return f"{label} at {moment[:40]}" if isinstance(moment, str) else label


def _lines_at(zf: zipfile.ZipFile, wanted: set[int]) -> dict[int, str]:
    """Descriptions of the entry lines at these positions (a second read, only when something differs)."""
    found: dict[int, str] = {}
    last = max(wanted, default=-1)
    stream = _read_member(zf, "entries.jsonl")
    try:
        for position in range(last + 1):
            line = stream.readline(MAX_ENTRY_LINE)
            if not line:
                break
            if position in wanted:
                found[position] = _describe(line.rstrip(b"\n"))
    finally:
        stream.close()
    return found


def _compare(
    zf: zipfile.ZipFile, report: Report, found: _Hashes, listed: _Hashes, newest: Checkpoint
) -> None:
    """Each entry against the authenticated leaf hash at its index; every difference named."""
    if found.data == listed.data:
        if not listed:
            return  # an empty range: nothing to place
        report.passed.append(f"all {len(found)} entries are in checkpoint {newest.size}, in this order")
        return
    differences = _differences(found, listed)
    wanted = {d.line + k for d in differences if d.what != "missing" for k in range(min(d.count, 2))}
    lines = _lines_at(zf, wanted)
    start, size = report.start, newest.size

    def entry(index: int, line: int) -> str:
        return f"entry {start + index}" + (f" ({lines[line]})" if line in lines else "")

    for d in differences:
        at = start + d.at
        if d.what == "modified":
            report.fail(
                f"{entry(d.at, d.line)}: does not hash to the log's leaf {at} in checkpoint {size} (modified)"
            )
        elif d.what == "swapped":
            report.fail(
                f"{entry(d.at, d.line)}: is the log's entry {at + 1} (entries {at} and {at + 1} swapped)"
            )
            report.fail(
                f"{entry(d.at + 1, d.line + 1)}: is the log's entry {at} (entries {at} and {at + 1} swapped)"
            )
        elif d.what == "missing" and d.count == 1:
            report.fail(
                f"entry {at}: missing from the bundle (the log holds it in checkpoint {size}; deleted?)"
            )
        elif d.what == "missing":
            report.fail(
                f"entries {at}..{at + d.count - 1} ({d.count}): missing from the bundle "
                f"(the log holds them in checkpoint {size}; deleted or cut off?)"
            )
        else:
            report.fail(
                f"entries.jsonl line {d.line + 1}"
                + (f" ({lines[d.line]})" if d.line in lines else "")
                + f": not in the log before entry {at} (added"
                + (f", with the {d.count - 1} line(s) after it)" if d.count > 1 else ")")
            )
    if len(differences) > MAX_NAMED_FAILURES:
        report.fail("... (further differences from the log not listed)")
