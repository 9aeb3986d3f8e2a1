"""Consent-gated release: the data plane's personal-data gate, answered by the citizen consent service.

``ConsentGate`` implements ``PersonalDataGate`` with ``consent.client``: controller = this
connector's DID, recipient = the consuming participant, purpose = the purpose the consumer declared
(which the transfer's agreement must bind: ``connector.agreed_purpose``), dataset = the asset. Subject ids are turned into keyed hashes by the client before anything leaves the
connector; nothing here logs them.

Withdrawal: the gate keeps no answers across releases. Each release (one pull, one push, one
live stream) gets a ``ReleaseGate`` that may reuse an answer for a subject for at most
``memo_seconds`` (1 s by default), and drops every reused answer as soon as the consent
service's change feed reports a change. So a release that starts after a withdrawal was
confirmed never releases the withdrawn subject, and a running release stops releasing it for
every record decided more than ``memo_seconds`` after the confirmation (sooner when the feed is
connected).

Every failure to get an answer (service not configured right, unreachable, slow, garbage, a
refusal such as "no data agreement for this purpose") raises ``GateFailure`` with a reason: the
data plane releases nothing more and the transfer is ended with that reason.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from connector.agreed_purpose import PurposeNotBound, consent_purpose
from connector.dataplane.gate import GateContext, GateDecision, GateFailure, PersonalDataGate
from connector.dataplane.gated_stream import DEFAULT_BATCH_SIZE, GatedStream, GateGarbage, GateUnavailable
from connector.transfer_models import TransferRow
from consent.client import (
    ConsentClient,
    ConsentRequestRefused,
    ConsentServiceError,
    ConsentUnavailable,
)
from consent.settings import CONSENT_API_PATH
from contracts.agreements import get_agreement
from identity.trustlist import get_member
from runtime.logging import get_logger
from runtime.service import ServiceCore

log = get_logger("tessera.consent_gate")
WITHHELD_REASON = "no valid consent (unknown, refused, withdrawn or expired)"
DEFAULT_MEMO_SECONDS = 1.0
MEMO_PRUNE_AT = 200_000  # a release's reused answers: drop the expired ones beyond this many
REPORT_ATTEMPTS = 4
# Subjects per summary request: the consent service writes each request in one transaction, and
# small ones keep its database free for decisions meanwhile (SQLite has one writer at a time).
REPORT_CHUNK = 1000
# Records a release decides at once (at most this many subjects per decision request, which is the
# consent service's default limit): each request costs a token check and a write at the service, so
# fewer, larger requests keep a pull fast. A live stream's batch is decided sooner (flush_after).
RELEASE_BATCH_RECORDS = 10_000
DECISION_RETRY_PAUSES = (0.2, 0.5)  # after a 5xx from the consent service (then the release fails)
PSEUDONYM_CACHE = 100_000  # subjects whose keyed hash is kept (about 20 MB at most)


class FeedAwareClient(ConsentClient):
    """The consent client, counting the change-feed events that may change an answer."""

    generation = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # raw id -> keyed hash: the same card recurs in every pull, and HMAC per record is the
        # largest cost of a gated pull. Not a consent answer (the key never changes), bounded.
        self._pseudonyms: dict[str, str] = {}

    def pseudonym(self, subject_id: str) -> str:
        known = self._pseudonyms.get(subject_id)
        if known is None:
            if len(self._pseudonyms) >= PSEUDONYM_CACHE:
                self._pseudonyms.clear()
            known = self._pseudonyms[subject_id] = super().pseudonym(subject_id)
        return known

    async def decide_now(
        self, recipient: str, purpose: str, dataset: str, subjects: Sequence[str]
    ) -> tuple[frozenset[str], str]:
        """A fresh answer for distinct raw ``subjects``: (those allowed, the decision ids).

        The same question as ``decide(..., fresh=True)``, with less work per subject (a gated pull
        asks about every record's subject).
        """
        known = self._pseudonyms
        hashes = [known.get(s) or self.pseudonym(s) for s in subjects]
        raw_of = dict(zip(hashes, subjects, strict=True))
        if len(raw_of) != len(subjects):  # two spellings of one id (surrounding spaces): the general path
            answer = await self.decide(recipient, purpose, dataset, subjects, fresh=True)
            return answer.allowed, "+".join(answer.decision_ids)
        allowed: set[str] = set()
        ids: list[str] = []
        for start in range(0, len(hashes), self._batch):
            body = await self._ask(recipient, purpose, dataset, hashes[start : start + self._batch])
            allowed.update(map(raw_of.__getitem__, body["allowed"]))
            ids.append(body["decision_id"])
        return frozenset(allowed), "+".join(ids)

    def apply_change(self, kind: str, seq: int, data: dict[str, Any]) -> None:
        super().apply_change(kind, seq, data)
        if kind != "head":
            self.generation += 1


class ConsentGate:
    """One per connector app: the consent client (connected on first use) and its change feed."""

    def __init__(
        self,
        core: ServiceCore,
        service_url: str,
        service_did: str,
        *,
        memo_seconds: float = DEFAULT_MEMO_SECONDS,
        timeout: float = 5.0,
    ) -> None:
        self._core = core
        self._api = service_url.rstrip("/") + CONSENT_API_PATH
        self.service_did = service_did
        self.memo_seconds = memo_seconds
        self._timeout = timeout
        self._client: FeedAwareClient | None = None
        self._connecting: asyncio.Lock | None = None
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def generation(self) -> int:
        return self._client.generation if self._client is not None else 0

    def for_release(self) -> ReleaseGate:
        """The gate one release uses: answers reused within it only, never across releases."""
        return ReleaseGate(self)

    async def client(self) -> FeedAwareClient:
        """The connected client; GateFailure when the service cannot be used (fail closed)."""
        if self._client is not None:
            return self._client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                await run_in_threadpool(self._check_trusted)
                try:
                    client = await FeedAwareClient.connect(
                        self._core.peer_client,
                        self.service_did,
                        self._api,
                        cache_ttl=0,  # answers are reused per release only (ReleaseGate)
                        batch_size=RELEASE_BATCH_RECORDS,
                        timeout=self._timeout,
                    )
                except ConsentServiceError as exc:
                    raise _failure(exc) from None
                assert isinstance(client, FeedAwareClient)
                self._client = client
            return self._client

    def check_purpose(self, context: GateContext) -> None:
        """GateFailure unless the transfer's agreement binds the consumer to the declared purpose."""
        with Session(self._core.engine) as session:
            row = session.get(TransferRow, context.transfer_id)
            agreement = get_agreement(session, row.agreement_id) if row is not None else None
        if agreement is None:
            raise GateFailure(f"transfer {context.transfer_id} has no agreement here")
        try:
            consent_purpose(agreement, context.purpose)
        except PurposeNotBound as exc:
            raise GateFailure(str(exc)) from None

    def report(self, context: GateContext, release_id: str, counts: dict[str, int]) -> None:
        """Send the release's transfer summary in the background (retried; failures are logged)."""
        task = asyncio.get_running_loop().create_task(self._send_report(context, release_id, counts))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _send_report(self, context: GateContext, release_id: str, counts: dict[str, int]) -> None:
        try:
            client = await self.client()
        except GateFailure as exc:
            log.warning("transfer summary not sent", transfer=context.transfer_id, reason=exc.reason)
            return
        sent_at = datetime.now(UTC)
        subjects = list(counts)
        for start in range(0, len(subjects), REPORT_CHUNK):
            part = {s: counts[s] for s in subjects[start : start + REPORT_CHUNK]}
            for attempt in range(REPORT_ATTEMPTS):
                try:
                    await client.report_transfer(
                        release_id, context.recipient, context.purpose, context.dataset_id, sent_at, part
                    )
                    break
                except ConsentServiceError as exc:
                    if attempt == REPORT_ATTEMPTS - 1:
                        log.warning("transfer summary not sent", transfer=context.transfer_id, error=str(exc))
                        return
                    await asyncio.sleep(0.5 * 2**attempt)
        log.info("transfer summary sent", transfer=context.transfer_id, subjects=len(counts))

    async def reports_sent(self) -> None:
        """Wait for the summaries under way (tests, shutdown)."""
        while self._reports:
            await asyncio.gather(*list(self._reports), return_exceptions=True)

    def _check_trusted(self) -> None:
        with Session(self._core.engine) as session:
            member = get_member(session, self.service_did)
        if member is None:
            raise GateFailure(f"the consent service {self.service_did} is not on the trust list")

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        """A fresh answer from the consent service for ``subjects`` (raw ids, hashed by the client)."""
        client = await self.client()
        if context.controller != client.controller:
            raise GateFailure("the release is not this connector's data: consent is not asked for it")
        if not context.purpose:
            raise GateFailure("the agreement names no purpose: personal data is released for a purpose only")
        for pause in (*DECISION_RETRY_PAUSES, None):
            try:
                allowed, decision_id = await client.decide_now(
                    context.recipient, context.purpose, context.dataset_id, subjects
                )
                break
            except ConsentServiceError as exc:
                failure = _failure(exc)
                # A server error (the service's database busy for a moment) is asked again, briefly;
                # nothing is released meanwhile. Anything else fails the release at once.
                if pause is None or not _server_error(exc):
                    raise failure from None
                await asyncio.sleep(pause)
        reason = WITHHELD_REASON if len(allowed) < len(subjects) else None
        return GateDecision(allowed, decision_id or "consent", reason)

    async def follow_changes(self) -> None:
        """A background job: follow the change feed (reconnecting) so reused answers drop at once."""
        while True:
            try:
                client = await self.client()
            except GateFailure as exc:
                log.warning("consent service not reachable; answers are not reused", reason=exc.reason)
                await asyncio.sleep(5.0)
                continue
            try:
                await client.follow_changes()
            finally:
                await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


@dataclass(frozen=True)
class _Answer:
    allowed: frozenset[str]
    asked_at: float  # monotonic, taken before the question was sent
    decision_id: str


class ReleaseGate:
    """The gate of one release: an answer per subject is reused for at most ``memo_seconds``."""

    def __init__(self, gate: ConsentGate) -> None:
        self._gate = gate
        self._seen = gate.generation
        self.release_id = f"{time.time_ns() // 1_000_000:x}"  # the summary's id within its transfer
        self._purpose_checked = False
        self._memo: dict[str, _Answer] = {}  # raw subject id -> the answer that decided it

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        if not self._purpose_checked:
            await run_in_threadpool(self._gate.check_purpose, context)
            self._purpose_checked = True
        self._forget_if_changed()
        now = time.monotonic()
        oldest = now - self._gate.memo_seconds
        memo = self._memo
        if len(memo) > MEMO_PRUNE_AT:
            self._memo = memo = {s: a for s, a in memo.items() if a.asked_at > oldest}
        if memo:
            get = memo.get
            ask = [s for s in subjects if (known := get(s)) is None or known.asked_at <= oldest]
        else:
            ask = list(subjects)
        if len(ask) == len(subjects):  # nothing reused: the fresh answer is the decision
            answer = await self._ask(ask, context, now)
            if not self._forget_if_changed(keep=ask):
                return self._decision(answer.allowed, [answer.decision_id], len(subjects))
        elif ask:
            await self._ask(ask, context, now)
            if self._forget_if_changed(keep=ask):  # a change arrived meanwhile: re-ask the older answers
                again = [s for s in subjects if s not in self._memo]
                if again:
                    await self._ask(again, context, time.monotonic())
        memo = self._memo
        answers = [memo[s] for s in subjects]
        released = frozenset(s for s, a in zip(subjects, answers, strict=True) if s in a.allowed)
        return self._decision(released, sorted({a.decision_id for a in answers}), len(subjects))

    @staticmethod
    def _decision(released: frozenset[str], ids: Sequence[str], asked: int) -> GateDecision:
        return GateDecision(released, "+".join(ids), WITHHELD_REASON if len(released) < asked else None)

    async def _ask(self, subjects: list[str], context: GateContext, asked_at: float) -> _Answer:
        decision = await self._gate.decide(subjects, context)
        answer = _Answer(decision.released, asked_at, decision.decision_id)
        self._memo.update(dict.fromkeys(subjects, answer))
        return answer

    def report(self, context: GateContext, counts: dict[str, int]) -> None:
        self._gate.report(context, f"{context.transfer_id}.{self.release_id}", counts)

    def _forget_if_changed(self, keep: Sequence[str] = ()) -> bool:
        """Drop reused answers (but ``keep``) when the change feed reported a change since we looked."""
        generation = self._gate.generation
        if generation == self._seen:
            return False
        self._seen = generation
        self._memo = {s: self._memo[s] for s in keep if s in self._memo}
        return True


def _server_error(exc: ConsentServiceError) -> bool:
    return isinstance(exc, ConsentUnavailable) and re.search(r"HTTP 5\d\d", str(exc)) is not None


def _failure(exc: ConsentServiceError) -> GateFailure:
    if isinstance(exc, ConsentRequestRefused):
        return GateFailure(f"the consent service refused the question: {exc}")
    message = str(exc)
    if "cannot be reached" in message or _server_error(exc):
        return GateUnavailable(f"consent service unavailable: {message}")
    return GateGarbage(f"the consent service answered garbage: {message}")


def open_release(gate: PersonalDataGate) -> PersonalDataGate:
    """The gate one release passes: a consent gate's per-release gate, any other gate as it is."""
    return gate.for_release() if isinstance(gate, ConsentGate) else gate


def batch_size_for(gate: PersonalDataGate) -> int:
    """How many records a release through ``gate`` decides at once."""
    return RELEASE_BATCH_RECORDS if isinstance(gate, ReleaseGate) else DEFAULT_BATCH_SIZE


def report_release(stream: GatedStream) -> None:
    """After a release through the consent gate: tell the consent service whose records went where."""
    gate = stream.gate
    if isinstance(gate, ReleaseGate) and stream.released_by_subject:
        gate.report(stream.context, dict(stream.released_by_subject))


def consent_gate_for(core: ServiceCore) -> ConsentGate | None:
    """The gate the connector's settings configure; None (the data plane's closed gate) without them."""
    url = getattr(core.settings, "consent_service_url", None)
    did = getattr(core.settings, "consent_service_did", None)
    if not url or not did:
        return None
    return ConsentGate(core, url, did)
