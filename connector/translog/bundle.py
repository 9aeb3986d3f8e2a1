"""Audit bundles: a time range of the log with everything needed to check it offline.

A bundle is a zip file (format ``tessera-transfer-log-bundle/1``):

``manifest.json``
    type, origin (the log's DID), the time range asked, ``start``/``end`` (the entries'
    index range), ``treeSize`` (the size of the newest checkpoint) and counts.
``entries.jsonl``
    the entries ``start .. end-1``, one per line, each exactly the canonical JSON bytes of its leaf.
``leaves.bin``
    the log's leaf hashes of the same entries, 32 bytes each, concatenated in index order (stored,
    not deflated: hashes do not compress). With the range proof they rebuild the newest root, which
    authenticates the list; each entry is then compared with the hash at its index, so a failure
    names the entry whatever the bundle's size. Added in the same format version: a verifier that
    does not know it ignores it, and a bundle without it is checked as before (range proof only).
``checkpoints.json``
    the signed checkpoints of the range plus a fresh one (ascending sizes), each a signed note
    with every witness cosignature we hold.
``proofs.json``
    ``consistency``: a proof between each pair of consecutive checkpoints; ``range``: the hashes
    that, with the entries, rebuild the root of the newest checkpoint; ``inclusion``: one
    inclusion proof per entry (for bundles of at most ``INCLUSION_PROOF_LIMIT`` entries), kept for
    verifiers that predate ``leaves.bin``.
``agreements.json``
    the agreements the entries name (the documents as signed, with both signatures).
``keys.json``
    DID -> {"publicKeyJwk", "didDocument"?}: the log's key and every member's (witnesses, parties).

``write_bundle`` streams the entries (pages of ``PAGE`` rows) and spools their leaf hashes to a
temporary file (a zip is written one member at a time), so memory stays flat whatever the range.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, select
from sqlmodel import Session

from connector.translog import merkle, store
from connector.translog.checkpoint import (
    SignedCheckpoint,
    latest_signed,
    sign_checkpoint,
    signed_between,
    with_cosignatures,
)
from connector.translog.entries import AGREEMENT_FINALIZED, utc_time
from connector.translog.times import MAX_TIME_MS
from contracts.models import AgreementRow
from identity.did import build_did_document
from identity.keys import public_jwk
from identity.trustlist import list_members

BUNDLE_TYPE = "tessera-transfer-log-bundle/1"
INCLUSION_PROOF_LIMIT = 10_000
MAX_CHECKPOINTS = 1000
PAGE = 10_000
AGREEMENT = AgreementRow.__table__  # type: ignore[attr-defined]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class BundleSummary:
    start: int
    end: int
    tree_size: int
    checkpoints: int
    agreements: int


def _checkpoints(
    conn: Connection, origin: str, from_ms: int, to_ms: int, newest: SignedCheckpoint
) -> list[SignedCheckpoint]:
    chosen = [
        c for c in signed_between(conn, origin, from_ms, to_ms, MAX_CHECKPOINTS * 10) if c.checkpoint.size > 0
    ]
    if len(chosen) > MAX_CHECKPOINTS - 1:  # keep the first, the last and evenly spaced ones between
        step = len(chosen) / (MAX_CHECKPOINTS - 1)
        chosen = [chosen[int(i * step)] for i in range(MAX_CHECKPOINTS - 1)]
    by_size = {c.checkpoint.size: c for c in chosen if c.checkpoint.size <= newest.checkpoint.size}
    by_size[newest.checkpoint.size] = newest
    return [by_size[size] for size in sorted(by_size)]


def _entry_lines(conn: Connection, start: int, end: int) -> Iterator[store.StoredEntry]:
    for first in range(start, end, PAGE):
        yield from store.read_entries(conn, first, min(first + PAGE, end))


def _keys(
    conn: Connection, origin: str, key: Ed25519PrivateKey, services: list[dict[str, Any]]
) -> dict[str, Any]:
    keys: dict[str, Any] = {
        origin: {
            "publicKeyJwk": public_jwk(key.public_key()),
            "didDocument": build_did_document(origin, key.public_key(), services),
        }
    }
    for member in list_members(Session(bind=conn)):
        keys.setdefault(member.did, {"publicKeyJwk": member.public_jwk})
    return keys


def write_bundle(
    engine: Engine,
    origin: str,
    key: Ed25519PrivateKey,
    from_ms: int,
    to_ms: int,
    out: IO[bytes],
    *,
    services: list[dict[str, Any]] | None = None,
) -> BundleSummary:
    """Write the bundle of the entries logged between the two times (epoch ms, inclusive) to ``out``."""
    from_ms, to_ms = max(0, min(from_ms, MAX_TIME_MS)), max(0, min(to_ms, MAX_TIME_MS))
    newest = sign_checkpoint(engine, origin, key)
    size = newest.checkpoint.size
    with engine.connect() as conn, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        start, end = store.index_range_for_time(conn, from_ms, to_ms)
        end = min(end, size)
        start = min(start, end)
        checkpoints = _checkpoints(conn, origin, from_ms, to_ms, newest)
        agreement_ids: set[str] = set()
        with tempfile.TemporaryFile() as leaves:
            with zf.open("entries.jsonl", "w", force_zip64=True) as sink:
                for stored in _entry_lines(conn, start, end):
                    sink.write(stored.entry + b"\n")
                    leaves.write(stored.leaf_hash)  # the hash the tree holds, not one recomputed here
                    if stored.kind == AGREEMENT_FINALIZED:
                        agreement_ids.add(json.loads(stored.entry)["agreementId"])
            leaves.seek(0)
            info = zipfile.ZipInfo("leaves.bin", date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(leaves, sink)
        nodes = store.DatabaseNodes(conn)
        proofs: dict[str, Any] = {
            "consistency": [
                {
                    "first": a.checkpoint.size,
                    "second": b.checkpoint.size,
                    "proof": [
                        b64(p) for p in merkle.consistency_proof(nodes, a.checkpoint.size, b.checkpoint.size)
                    ],
                }
                for a, b in itertools.pairwise(checkpoints)
            ],
            "range": [b64(p) for p in merkle.range_proof(nodes, start, end, size)] if end > start else [],
        }
        if end - start <= INCLUSION_PROOF_LIMIT:
            proofs["inclusion"] = [
                {"index": i, "proof": [b64(p) for p in merkle.inclusion_proof(nodes, i, size)]}
                for i in range(start, end)
            ]
        zf.writestr("proofs.json", json.dumps(proofs))
        zf.writestr(
            "checkpoints.json", json.dumps([{"note": with_cosignatures(conn, c)} for c in checkpoints])
        )
        agreements = {}
        for ids in _chunks(sorted(agreement_ids), 500):
            for row in conn.execute(select(AGREEMENT).where(AGREEMENT.c.id.in_(ids))):
                agreements[row.id] = {
                    "agreement": json.loads(row.agreement),
                    "providerSignature": row.provider_signature,
                    "consumerSignature": row.consumer_signature,
                }
        zf.writestr("agreements.json", json.dumps(agreements))
        zf.writestr("keys.json", json.dumps(_keys(conn, origin, key, services or [])))
        manifest = {
            "type": BUNDLE_TYPE,
            "origin": origin,
            "from": utc_time(from_ms),
            "to": utc_time(to_ms),
            "start": start,
            "end": end,
            "treeSize": size,
            "checkpoints": len(checkpoints),
            "agreements": len(agreements),
            "createdAt": utc_time(int(time.time() * 1000)),
        }
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
    return BundleSummary(start, end, size, len(checkpoints), len(agreements))


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def newest_checkpoint(engine: Engine, origin: str) -> SignedCheckpoint | None:
    with engine.connect() as conn:
        return latest_signed(conn, origin)
