"""What the audit page shows of the log: the signed checkpoint, and each entry with its inclusion proof.

The server only serves material; the browser checks it (``static/audit-verify.js``): the
checkpoint's Ed25519 signature with this connector's public key, and each entry's leaf
hash and audit path up to the checkpoint's root. An entry the server altered, or a proof
it got wrong, shows as FAILED in the page.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlmodel import Session

from connector.auditor.chart import human_bytes
from connector.pages.render import path_segment
from connector.translog import merkle, store
from connector.translog.checkpoint import (
    CheckpointError,
    SignedCheckpoint,
    latest_signed,
    sign_checkpoint,
    with_cosignatures,
)
from connector.translog.models import LogLeafRow
from connector.translog.note import ED25519, parse_note, raw_public_key, verifier_key_string
from identity.errors import KeyFileError
from identity.keys import public_key_from_jwk
from identity.trustlist import get_member
from runtime.service import ServiceCore

LEAF = LogLeafRow.__table__  # type: ignore[attr-defined]
KIND_WORDS = {
    "agreement.finalized": "Agreement finalized",
    "transfer.started": "Transfer started",
    "transfer.suspended": "Transfer suspended",
    "transfer.completed": "Transfer completed",
    "transfer.terminated": "Transfer terminated",
    "refusal": "Refusal",
}
SIGNATURE_FIELDS = {
    "providerSignature": "Provider's signature",
    "consumerSignature": "Consumer's signature",
    "signature": "Signature",
    "receipt": "Receipt",
    "consumerReceipt": "Consumer's receipt",
    "providerReceipt": "Provider's receipt",
}


@dataclass(frozen=True)
class Witness:
    """A cosignature on the checkpoint, and the key this connector pins for its signer (if any)."""

    name: str
    public_key_base64: str | None  # raw Ed25519 key from the trust list; None for an unknown witness


def _pinned_key(session: Session, did: str) -> str | None:
    member = get_member(session, did)
    if member is None:
        return None
    try:
        return base64.b64encode(raw_public_key(public_key_from_jwk(member.public_jwk))).decode()
    except KeyFileError:
        return None


@dataclass(frozen=True)
class CheckpointView:
    origin: str
    size: int
    root_base64: str
    note: str  # as signed, with the witnesses' cosignature lines
    signed_at: int
    public_key_base64: str  # this connector's raw Ed25519 key: what the page checks the signature with
    verifier_key: str  # the same key as a note verifier key, for comparing with one obtained elsewhere
    witnesses: list[Witness]


def current_checkpoint(core: ServiceCore) -> tuple[SignedCheckpoint | None, str | None]:
    """The newest signed checkpoint, signing one first when the log has grown since (as /log does)."""
    origin = core.settings.did
    with core.engine.connect() as conn:
        latest = latest_signed(conn, origin)
        size = store.tree_size(conn)
    if latest is not None and latest.checkpoint.size == size:
        return latest, None
    try:
        return sign_checkpoint(core.engine, origin, core.key), None
    except CheckpointError as exc:
        return latest, f"This connector refused to sign a checkpoint of its log: {exc}"


def checkpoint_view(core: ServiceCore, signed: SignedCheckpoint) -> CheckpointView:
    with core.engine.connect() as conn:
        note = with_cosignatures(conn, signed)
    public_key = core.key.public_key()
    origin = signed.checkpoint.origin
    with Session(core.engine) as session:
        witnesses = [
            Witness(s.name, _pinned_key(session, s.name))
            for s in parse_note(note).signatures
            if s.name != origin
        ]
    return CheckpointView(
        origin=origin,
        size=signed.checkpoint.size,
        root_base64=base64.b64encode(signed.checkpoint.root).decode(),
        note=note,
        signed_at=signed.signed_at,
        public_key_base64=base64.b64encode(raw_public_key(public_key)).decode(),
        verifier_key=verifier_key_string(origin, ED25519, public_key),
        witnesses=witnesses,
    )


@dataclass(frozen=True)
class EntryView:
    index: int
    kind: str
    kind_words: str
    created_at: int
    text: str  # the stored canonical entry: the leaf's data
    pretty: str  # the same, indented for reading
    facts: list[tuple[str, str]]
    signatures: list[tuple[str, str]]
    personal: bool
    proof: str  # the audit path: base64 hashes separated by spaces ("" for a one-entry tree)
    proof_length: int
    in_checkpoint: bool
    agreement_url: str | None


def _facts(entry: dict[str, Any]) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    for key, label in (
        ("counterParty", "Counter-party"),
        ("provider", "Provider"),
        ("consumer", "Consumer"),
        ("role", "Our role"),
        ("dataset", "Dataset"),
        ("agreementId", "Agreement"),
        ("transferId", "Transfer"),
        ("negotiationId", "Negotiation"),
        ("records", "Records"),
        ("payloadSha256", "Payload SHA-256"),
        ("subject", "What was refused"),
        ("by", "Ended by"),
        ("reason", "Reason"),
    ):
        if isinstance(entry.get(key), str | int) and not isinstance(entry.get(key), bool):
            facts.append((label, str(entry[key])))
    if isinstance(entry.get("bytes"), int):
        facts.append(("Bytes", f"{entry['bytes']} ({human_bytes(entry['bytes'])})"))
    decision = entry.get("policyDecision")
    if isinstance(decision, dict):
        verdict = "allowed" if decision.get("allowed") else "denied"
        facts.append(("Policy decision", f"{verdict}: {decision.get('explanation', '')}".rstrip(": ")))
    consent = entry.get("consent")
    if isinstance(consent, dict):
        facts.append(
            (
                "Consent",
                f"{consent.get('released', 0)} records released, {consent.get('withheld', 0)} withheld "
                f"({len(consent.get('decisionIds') or [])} consent decisions)",
            )
        )
    return facts


class _Prefetched:
    """``merkle.NodeReader`` over subtree hashes read beforehand."""

    def __init__(self, found: dict[merkle.Coord, bytes]) -> None:
        self.found = found

    def node_hashes(self, coords: Iterable[merkle.Coord]) -> dict[merkle.Coord, bytes]:
        return {c: self.found[c] for c in coords if c in self.found}


def inclusion_proofs(conn: Connection, indexes: list[int], size: int) -> dict[int, list[bytes]]:
    """The inclusion proofs of several entries in the tree of ``size``, their subtrees read in one go."""
    wanted = {
        coord
        for index in indexes
        for start, end in merkle.inclusion_ranges(index, size)
        for coord in merkle.subtrees_of(start, end)
    }
    reader = _Prefetched(store.DatabaseNodes(conn).node_hashes(wanted))
    return {index: merkle.inclusion_proof(reader, index, size) for index in indexes}


def entry_views(
    conn: Connection, indexes: list[int], facts: dict[int, dict[str, Any]], checkpoint_size: int
) -> list[EntryView]:
    """The entries at ``indexes`` (in that order) with their proofs against the checkpoint's tree."""
    rows = (
        {int(r.idx): r for r in conn.execute(select(LEAF).where(LEAF.c.idx.in_(indexes)))} if indexes else {}
    )
    proofs = inclusion_proofs(
        conn, [i for i in indexes if i < checkpoint_size and i in rows], checkpoint_size
    )
    views = []
    for index in indexes:
        row = rows.get(index)
        if row is None:
            continue
        try:
            entry = json.loads(row.entry)
        except ValueError:
            entry = {}
        entry = entry if isinstance(entry, dict) else {}
        in_checkpoint = index < checkpoint_size
        proof = proofs.get(index, [])
        agreement_id = entry.get("agreementId")
        views.append(
            EntryView(
                index=index,
                kind=row.kind,
                kind_words=KIND_WORDS.get(row.kind, row.kind),
                created_at=int(row.created_at),
                text=row.entry,
                pretty=json.dumps(entry, indent=2, ensure_ascii=False) if entry else row.entry,
                facts=_facts(entry),
                signatures=[
                    (label, entry[key])
                    for key, label in SIGNATURE_FIELDS.items()
                    if isinstance(entry.get(key), str)
                ],
                personal=bool(facts.get(index, {}).get("personal")),
                proof=" ".join(base64.b64encode(h).decode() for h in proof),
                proof_length=len(proof),
                in_checkpoint=in_checkpoint,
                agreement_url=(
                    f"/ui/audit/agreements/{path_segment(agreement_id)}"
                    if isinstance(agreement_id, str)
                    else None
                ),
            )
        )
    return views
