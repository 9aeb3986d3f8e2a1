"""Witnessing the members' transfer logs: fetch, check, cosign, and raise the alarm.

For each trust-list member with a Tessera log (its DSP address ends in ``/dsp/2025-1``), the
witness fetches ``/log/checkpoint``, opens the note with the member's pinned key (key name =
origin = the member's DID), and compares it with the newest checkpoint it saw before (stored
per member): a larger tree must come with a consistency proof from the old one
(``/log/proof/consistency``) that verifies. Then it cosigns the checkpoint
(tlog-cosignature/v1, key name = our DID) and posts the cosignature back
(``/log/cosignatures``). The first checkpoint seen of a member is taken as it is (trust on
first use); from then on every one must extend it. A smaller tree (shrink), another root at the same size (fork), or a
proof that fails (rewrite) raises an alert: a warning in our logs, a Prometheus counter, a
``witness.alert`` entry in our own transfer log and a stored alert row the operator pages
list. The last good checkpoint is kept, so the alert repeats until someone looks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import weakref
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, insert, select, update

from connector.translog import merkle
from connector.translog.checkpoint import Checkpoint, CheckpointError, log_verifier, parse_checkpoint
from connector.translog.entries import WITNESS_ALERT, redact_text
from connector.translog.models import LogAlertRow, WitnessedLogRow
from connector.translog.note import MAX_NOTE_BYTES, NoteError, cosign, open_note
from connector.translog.store import append_entry
from identity.keys import public_key_from_jwk
from identity.peer_client import PeerClient, ResponseTooLarge
from identity.trustlist import MemberView, list_members
from runtime.logging import get_logger
from runtime.settings import DSP_PATH

WITNESSED = WitnessedLogRow.__table__  # type: ignore[attr-defined]
ALERT = LogAlertRow.__table__  # type: ignore[attr-defined]
MAX_PROOF_BYTES = 64 * 1024
FIRST_ROUND_DELAY_SECONDS = 5.0

AlertKind = Literal["fork", "shrink", "rewrite"]
log = get_logger("tessera.witness")
_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def alert_counter(registry: CollectorRegistry) -> Counter:
    """``tessera_transfer_log_alerts_total{kind}`` in this registry (created once per registry)."""
    counter = _counters.get(registry)
    if counter is None:
        counter = Counter(
            "tessera_transfer_log_alerts",
            "Members' transfer logs seen to fork, shrink or rewrite history",
            ["kind"],
            registry=registry,
        )
        _counters[registry] = counter
    return counter


@dataclass(frozen=True)
class WitnessResult:
    member: str
    status: Literal["cosigned", "unchanged", "alert", "failed", "skipped"]
    size: int | None = None
    detail: str | None = None


class WitnessFailure(Exception):
    """The member could not be checked this round (unreachable, bad answer); not evidence of misbehaviour."""


@dataclass(frozen=True)
class Witness:
    engine: Engine
    did: str
    key: Ed25519PrivateKey
    client: PeerClient
    registry: CollectorRegistry

    async def _get(self, member: MemberView, url: str, max_bytes: int) -> bytes:
        try:
            response = await self.client.request(member.did, "GET", url, max_bytes=max_bytes)
        except ResponseTooLarge as exc:
            raise WitnessFailure(str(exc)) from None
        except Exception as exc:  # httpx errors: unreachable, timeouts
            raise WitnessFailure(f"{url} could not be fetched: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise WitnessFailure(f"{url} answered HTTP {response.status_code}")
        return response.content

    async def _consistency(self, member: MemberView, base: str, first: int, second: int) -> list[bytes]:
        body = await self._get(
            member, f"{base}/log/proof/consistency?first={first}&second={second}", MAX_PROOF_BYTES
        )
        try:
            proof = json.loads(body)["proof"]
            return [base64.b64decode(p, validate=True) for p in proof]
        except (ValueError, KeyError, TypeError):
            raise WitnessFailure("the consistency proof is not JSON with a list of base64 hashes") from None

    async def witness(self, member: MemberView) -> WitnessResult:
        if not member.dsp_url.endswith(DSP_PATH):
            return WitnessResult(member.did, "skipped", detail="not a Tessera connector (no transfer log)")
        base = member.dsp_url.removesuffix(DSP_PATH)
        try:
            return await self._witness(member, base)
        except WitnessFailure as exc:
            await asyncio.to_thread(self._record_error, member.did, str(exc))
            return WitnessResult(member.did, "failed", detail=str(exc))

    async def _witness(self, member: MemberView, base: str) -> WitnessResult:
        raw = await self._get(member, f"{base}/log/checkpoint", MAX_NOTE_BYTES)
        try:
            opened = open_note(raw, [log_verifier(member.did, public_key_from_jwk(member.public_jwk))])
            checkpoint = parse_checkpoint(opened.note.text)
        except (NoteError, CheckpointError) as exc:
            raise WitnessFailure(f"the checkpoint of {member.did} is not acceptable: {exc}") from None
        if checkpoint.origin != member.did:
            raise WitnessFailure(f"the checkpoint's origin is {checkpoint.origin}, not {member.did}")
        previous = await asyncio.to_thread(self._previous, member.did)
        note_text = opened.note.render()
        if previous is not None:
            old = Checkpoint(member.did, int(previous.size), bytes(previous.root))
            problem = await self._compare(member, base, old, checkpoint)
            if problem is not None:
                kind, detail = problem
                await asyncio.to_thread(
                    self._alert, member.did, kind, detail, old, checkpoint, previous.note, note_text
                )
                return WitnessResult(member.did, "alert", checkpoint.size, f"{kind}: {detail}")
            if old.size == checkpoint.size:
                return WitnessResult(member.did, "unchanged", checkpoint.size)
        # Cosignature first: if the member does not take it, nothing is remembered and the next
        # round checks (and cosigns) from the older checkpoint again.
        await self._give_cosignature(member, base, checkpoint)
        await asyncio.to_thread(self._remember, member.did, checkpoint, note_text, previous is not None)
        return WitnessResult(member.did, "cosigned", checkpoint.size)

    async def _compare(
        self, member: MemberView, base: str, old: Checkpoint, new: Checkpoint
    ) -> tuple[AlertKind, str] | None:
        if new.size < old.size:
            return "shrink", f"the log shrank from {old.size} to {new.size} entries"
        if new.size == old.size:
            if new.root != old.root:
                return "fork", f"two different roots for size {new.size}"
            return None
        if old.size == 0:
            return None
        proof = await self._consistency(member, base, old.size, new.size)
        try:
            merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
        except merkle.ProofError as exc:
            return "rewrite", f"size {new.size} is not an extension of size {old.size}: {exc}"
        return None

    async def _give_cosignature(self, member: MemberView, base: str, checkpoint: Checkpoint) -> None:
        line = cosign(self.did, self.key, checkpoint.text(), int(time.time())).line()
        try:
            response = await self.client.request(
                member.did,
                "POST",
                f"{base}/log/cosignatures",
                json={"checkpoint": checkpoint.text(), "cosignature": line},
            )
        except Exception as exc:
            raise WitnessFailure(f"the cosignature could not be delivered: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise WitnessFailure(f"{member.did} refused our cosignature: HTTP {response.status_code}")

    # -------------------------------------------------------------- storage (run in threads)

    def _previous(self, did: str) -> WitnessedLogRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(WITNESSED).where(WITNESSED.c.member_did == did)).first()
        return None if row is None else WitnessedLogRow(**row._mapping)

    def _remember(self, did: str, checkpoint: Checkpoint, note: str, exists: bool) -> None:
        values = {
            "size": checkpoint.size,
            "root": checkpoint.root,
            "note": note,
            "checked_at": int(time.time() * 1000),
            "last_error": None,
        }
        with self.engine.begin() as conn:
            if exists:
                conn.execute(update(WITNESSED).where(WITNESSED.c.member_did == did).values(**values))
            else:
                conn.execute(insert(WITNESSED).values(member_did=did, **values))

    def _record_error(self, did: str, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(WITNESSED).where(WITNESSED.c.member_did == did).values(last_error=error[:2000])
            )

    def _alert(
        self,
        did: str,
        kind: AlertKind,
        detail: str,
        old: Checkpoint,
        new: Checkpoint,
        previous_note: str,
        new_note: str,
    ) -> None:
        log.warning("transfer log alert", member=did, alert=kind, detail=detail)
        alert_counter(self.registry).labels(kind).inc()
        with self.engine.begin() as conn:
            seen = conn.execute(
                select(ALERT.c.id).where(ALERT.c.member_did == did, ALERT.c.new_note == new_note)
            ).first()
            if seen is not None:  # the same evidence again: counted and logged, stored once
                return
            now = int(time.time() * 1000)
            conn.execute(
                insert(ALERT).values(
                    member_did=did,
                    kind=kind,
                    detail=detail,
                    previous_note=previous_note,
                    new_note=new_note,
                    created_at=now,
                )
            )
            append_entry(
                conn,
                WITNESS_ALERT,
                {
                    "member": did,
                    "alert": kind,
                    "previousSize": old.size,
                    "previousRoot": base64.b64encode(old.root).decode(),
                    "newSize": new.size,
                    "newRoot": base64.b64encode(new.root).decode(),
                    "detail": redact_text(detail),
                },
            )


async def witness_all(witness: Witness) -> dict[str, WitnessResult]:
    """Witness every member's log (a few at a time); our own log is not ours to witness."""

    def members() -> list[MemberView]:
        from sqlmodel import Session

        with Session(witness.engine) as session:
            return [m for m in list_members(session) if m.did != witness.did]

    limit = asyncio.Semaphore(4)

    async def one(member: MemberView) -> WitnessResult:
        async with limit:
            try:
                return await witness.witness(member)
            except Exception as exc:  # a database failure: reported per member, the others go on
                log.exception("witnessing failed", member=member.did)
                return WitnessResult(member.did, "failed", detail=f"{type(exc).__name__}: {exc}"[:500])

    results = await asyncio.gather(*(one(m) for m in await asyncio.to_thread(members)))
    return {r.member: r for r in results}


class LogWitness:
    """Witnesses on demand and every ``interval_seconds``; one round at a time per process."""

    def __init__(self, witness: Witness, interval_seconds: float) -> None:
        self.witness = witness
        self.interval_seconds = interval_seconds
        self._lock = asyncio.Lock()

    async def witness_now(self) -> dict[str, WitnessResult]:
        async with self._lock:
            return await witness_all(self.witness)

    async def run(self) -> None:
        await asyncio.sleep(min(FIRST_ROUND_DELAY_SECONDS, self.interval_seconds))
        while True:
            try:
                await self.witness_now()
            except Exception:
                log.exception("witnessing round failed")
            await asyncio.sleep(self.interval_seconds)


def list_alerts(engine: Engine, limit: int = 100) -> list[LogAlertRow]:
    with engine.connect() as conn:
        rows = conn.execute(select(ALERT).order_by(ALERT.c.id.desc()).limit(limit))
        return [LogAlertRow(**row._mapping) for row in rows]


def list_witnessed(engine: Engine) -> list[WitnessedLogRow]:
    with engine.connect() as conn:
        rows = conn.execute(select(WITNESSED).order_by(WITNESSED.c.member_did))
        return [WitnessedLogRow(**row._mapping) for row in rows]
