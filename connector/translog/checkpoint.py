"""Checkpoints (c2sp.org/tlog-checkpoint): the log's size and root, signed as a note by the connector.

The text is three lines: the origin (the connector's DID), the tree size in decimal, the
base64 root hash. The note is signed with the participant's Ed25519 key under the key name
= the origin. Before signing, the new tree is checked against the newest checkpoint already
signed (a consistency proof from the database, verified against the stored root): a log that
shrank or whose history changed is never signed. Witnesses' cosignatures are stored per
checkpoint and appended to the note when it is served.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from connector.translog import merkle, store
from connector.translog.models import LogCheckpointRow, LogCosignatureRow
from connector.translog.note import (
    COSIGNATURE_V1,
    ED25519,
    Note,
    NoteError,
    NoteSigner,
    Verifier,
    parse_note,
    valid_key_name,
)

CHECKPOINT = LogCheckpointRow.__table__  # type: ignore[attr-defined]
COSIGNATURE = LogCosignatureRow.__table__  # type: ignore[attr-defined]
MAX_SIZE = 2**63 - 1


class CheckpointError(ValueError):
    """A checkpoint is malformed, or signing one would break the log's promise; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint in a note's text (extension lines are allowed and ignored)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("a checkpoint has an origin, a size and a root hash, each on its own line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not valid_key_name(origin):
        raise CheckpointError("the checkpoint origin is empty or contains spaces or '+'")
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckpointError(f"the checkpoint size {size_text[:40]!r} is not a decimal number")
    size = int(size_text)
    if size > MAX_SIZE:
        raise CheckpointError("the checkpoint size is too large")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("the checkpoint root hash is not base64") from None
    if len(root) != merkle.HASH_SIZE:
        raise CheckpointError(f"the checkpoint root hash is not {merkle.HASH_SIZE} bytes")
    return Checkpoint(origin, size, root)


def log_verifier(origin: str, public_key: Ed25519PublicKey) -> Verifier:
    return Verifier(origin, ED25519, public_key)


def witness_verifier(name: str, public_key: Ed25519PublicKey) -> Verifier:
    return Verifier(name, COSIGNATURE_V1, public_key)


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str  # with our signature only
    signed_at: int  # epoch ms


def _row_to_signed(origin: str, row: object) -> SignedCheckpoint:
    return SignedCheckpoint(
        Checkpoint(origin, int(row.size), bytes(row.root)),  # type: ignore[attr-defined]
        row.note,  # type: ignore[attr-defined]
        int(row.signed_at),  # type: ignore[attr-defined]
    )


def latest_signed(conn: Connection, origin: str) -> SignedCheckpoint | None:
    row = conn.execute(select(CHECKPOINT).order_by(CHECKPOINT.c.size.desc()).limit(1)).first()
    return None if row is None else _row_to_signed(origin, row)


def signed_at_size(conn: Connection, origin: str, size: int) -> SignedCheckpoint | None:
    row = conn.execute(select(CHECKPOINT).where(CHECKPOINT.c.size == size)).first()
    return None if row is None else _row_to_signed(origin, row)


def signed_between(
    conn: Connection, origin: str, from_ms: int, to_ms: int, limit: int
) -> list[SignedCheckpoint]:
    rows = conn.execute(
        select(CHECKPOINT)
        .where(CHECKPOINT.c.signed_at >= from_ms, CHECKPOINT.c.signed_at <= to_ms)
        .order_by(CHECKPOINT.c.size)
        .limit(limit)
    )
    return [_row_to_signed(origin, row) for row in rows]


def _check_extends(conn: Connection, previous: SignedCheckpoint, size: int, root: bytes) -> None:
    """Refuse unless the tree (size, root) extends the previous signed checkpoint."""
    if size < previous.checkpoint.size:
        raise CheckpointError(
            f"refusing to sign: the log has {size} entries but checkpoint {previous.checkpoint.size} was signed"
        )
    if previous.checkpoint.size == 0:
        return
    try:
        proof = store.consistency_proof(conn, previous.checkpoint.size, size)
        merkle.verify_consistency(previous.checkpoint.size, size, proof, previous.checkpoint.root, root)
    except (merkle.ProofError, LookupError) as exc:
        raise CheckpointError(
            f"refusing to sign: the log is not consistent with signed checkpoint {previous.checkpoint.size}: {exc}"
        ) from None


def sign_checkpoint(engine: Engine, origin: str, key: Ed25519PrivateKey) -> SignedCheckpoint:
    """The checkpoint of the log now, signed and stored (the stored one when the log has not grown)."""
    signer = NoteSigner(origin, key)
    store.index_leaf_hashes(engine)  # keeps the leaf-hash lookups' catch-up short (witnesses ask often)
    with engine.begin() as conn:
        size, root = store.tree_head(conn)
        previous = latest_signed(conn, origin)
        if previous is not None and previous.checkpoint.size == size:
            if previous.checkpoint.root != root:
                raise CheckpointError(
                    f"refusing to sign: the root of size {size} differs from the signed one"
                )
            return previous
        if previous is not None:
            _check_extends(conn, previous, size, root)
        checkpoint = Checkpoint(origin, size, root)
        note = Note(checkpoint.text(), (signer.sign(checkpoint.text()),)).render()
        signed = SignedCheckpoint(checkpoint, note, int(time.time() * 1000))
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(CHECKPOINT).values(size=size, root=root, note=note, signed_at=signed.signed_at)
                )
        except IntegrityError:  # another process signed this size first: serve theirs
            existing = signed_at_size(conn, origin, size)
            if existing is None:
                raise
            return existing
        return signed


def cosignature_lines(conn: Connection, size: int) -> list[str]:
    rows = conn.execute(
        select(COSIGNATURE.c.signature_line)
        .where(COSIGNATURE.c.checkpoint_size == size)
        .order_by(COSIGNATURE.c.witness_did)
    )
    return [row.signature_line for row in rows]


def with_cosignatures(conn: Connection, signed: SignedCheckpoint) -> str:
    """The signed note with every stored cosignature line appended."""
    return signed.note + "".join(cosignature_lines(conn, signed.checkpoint.size))


def store_cosignature(
    engine: Engine,
    origin: str,
    witness_did: str,
    witness_key: Ed25519PublicKey,
    checkpoint_text: str,
    line: str,
) -> int:
    """Verify a witness's cosignature on one of our checkpoints and keep it; the checkpoint's size.

    ``CheckpointError`` when the checkpoint is not one we signed or the cosignature does not
    verify with the witness's pinned key under its name.
    """
    checkpoint = parse_checkpoint(checkpoint_text)
    if checkpoint.origin != origin:
        raise CheckpointError(f"the checkpoint is of {checkpoint.origin}, not of this log ({origin})")
    try:
        note = parse_note(checkpoint_text + "\n" + line.rstrip("\n") + "\n")
    except NoteError as exc:
        raise CheckpointError(f"the cosignature line is malformed: {exc}") from None
    (signature,) = note.signatures
    verifier = witness_verifier(witness_did, witness_key)
    if signature.name != witness_did or signature.key_id != verifier.key_id:
        raise CheckpointError(f"the cosignature is not by {witness_did}'s key under the name {witness_did}")
    try:
        cosigned_at = verifier.verify(note.text, signature)
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    with engine.begin() as conn:
        ours = signed_at_size(conn, origin, checkpoint.size)
        if ours is None or ours.checkpoint.text() != checkpoint.text():
            raise CheckpointError(f"this log never signed that checkpoint (size {checkpoint.size})")
        exists = conn.execute(
            select(COSIGNATURE.c.id).where(
                COSIGNATURE.c.checkpoint_size == checkpoint.size, COSIGNATURE.c.witness_did == witness_did
            )
        ).first()
        if exists is None:
            conn.execute(
                insert(COSIGNATURE).values(
                    checkpoint_size=checkpoint.size,
                    witness_did=witness_did,
                    signature_line=signature.line(),
                    cosigned_at=cosigned_at or 0,
                    received_at=int(time.time() * 1000),
                )
            )
    return checkpoint.size
