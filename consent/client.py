"""The connector side of consent: pseudonymise subjects, ask for decisions, follow withdrawals.

The data plane's personal-data gate uses ``ConsentClient``: raw subject ids
(card numbers) are turned into keyed hashes here, before anything leaves the
connector, and only hashes travel or appear in errors. Every failure to get a
well-formed answer raises ``ConsentUnavailable`` (fail closed: the caller
releases nothing personal); a refusal by the service (no agreement for the
purpose, a malformed request) raises ``ConsentRequestRefused``.

Answers are cached for ``cache_ttl`` seconds, but only while the change feed
(``follow_changes``) is connected: a change for a subject drops its cached
answers, an agreement change or a lost feed drops them all, and an answer
older than the newest change the feed has delivered is never cached. Pass
``fresh=True`` at the start of a release to bypass the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from consent.hashing import SUBJECT_HASH, decode_pseudonym_key
from identity.peer_client import PeerClient

DEFAULT_BATCH = 1000
FEED_SILENCE_SECONDS = 5.0  # the feed sends a heartbeat every second; this much silence means it is lost
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
REPORT_BATCH = 10_000  # the service's limit per transfer report


class ConsentServiceError(Exception):
    """The consent service could not give a usable answer; nothing personal may be released."""


class ConsentUnavailable(ConsentServiceError):
    """Unreachable, timed out, failed (5xx), or answered something that is not a valid decision."""


class ConsentRequestRefused(ConsentServiceError):
    """The service refused the question (4xx), e.g. no data agreement covers the purpose."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"consent service refused the request ({status} {code}): {message}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ConsentDecision:
    """Which raw subject ids may be released (the caller's own ids, never sent anywhere)."""

    allowed: frozenset[str]
    withheld: int
    decision_ids: tuple[str, ...]
    revision: int  # the lowest consent revision any part of the answer reflects (cache: the oldest entry's)


class ConsentClient:
    def __init__(
        self,
        peer_client: PeerClient,
        consent_did: str,
        api_url: str,
        pseudonym_key: str,
        *,
        controller: str | None = None,
        cache_ttl: float = 1.0,
        batch_size: int = DEFAULT_BATCH,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._peers = peer_client
        self._audience = consent_did
        self._api = api_url.rstrip("/")
        self._key = decode_pseudonym_key(pseudonym_key)
        self.controller = controller or peer_client.did
        self._ttl = cache_ttl
        self._batch = batch_size
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        # subject hash -> (recipient, purpose, dataset) -> (allowed, valid until (monotonic))
        self._cache: dict[str, dict[tuple[str, str, str], tuple[bool, float]]] = {}
        self._feed_seq = -1
        self._feed_seen_at = 0.0
        self.feed_connected = asyncio.Event()

    @classmethod
    async def connect(
        cls, peer_client: PeerClient, consent_did: str, api_url: str, **options: Any
    ) -> ConsentClient:
        """A client with this connector's pseudonymisation key, fetched from the consent service."""
        transport = options.get("transport")
        timeout = options.get("timeout", 5.0)
        async with httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False) as http:
            body = await _call(
                http, peer_client, consent_did, "GET", f"{api_url.rstrip('/')}/pseudonymisation-key"
            )
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            raise ConsentUnavailable("the consent service did not send a pseudonymisation key")
        try:
            return cls(peer_client, consent_did, api_url, key, **options)
        except ValueError as exc:
            raise ConsentUnavailable(f"the consent service sent an unusable key: {exc}") from None

    async def aclose(self) -> None:
        await self._http.aclose()

    def pseudonym(self, subject_id: str) -> str:
        """The keyed hash of a raw subject id (what the consent service knows it by)."""
        return hmac.digest(self._key, subject_id.strip().encode("utf-8"), hashlib.sha256).hex()

    # ---- decisions --------------------------------------------------------------------------

    async def decide(
        self, recipient: str, purpose: str, dataset: str, subject_ids: Iterable[str], *, fresh: bool = False
    ) -> ConsentDecision:
        """Which of ``subject_ids`` have valid consent for (us, recipient, purpose, dataset)."""
        by_hash: dict[str, list[str]] = {}
        for subject in subject_ids:
            by_hash.setdefault(self.pseudonym(subject), []).append(subject)
        allowed_hashes: set[str] = set()
        use_cache = not fresh and self._feed_live()
        now = time.monotonic()
        ask: list[str] = []
        purpose_key = (recipient, purpose, dataset)
        for subject_hash in by_hash:
            cached = self._cache.get(subject_hash, {}).get(purpose_key) if use_cache else None
            if cached is not None and cached[1] > now:
                if cached[0]:
                    allowed_hashes.add(subject_hash)
            else:
                ask.append(subject_hash)
        decision_ids: list[str] = []
        revisions: list[int] = []
        for start in range(0, len(ask), self._batch):
            chunk = ask[start : start + self._batch]
            answer = await self._ask(recipient, purpose, dataset, chunk)
            decision_ids.append(answer["decision_id"])
            revisions.append(answer["revision"])
            granted = set(answer["allowed"])
            allowed_hashes |= granted
            self._remember(purpose_key, chunk, granted, answer["revision"])
        allowed = frozenset(raw for h in allowed_hashes for raw in by_hash[h])
        withheld = sum(len(raws) for h, raws in by_hash.items() if h not in allowed_hashes)
        revision = min(revisions) if revisions else self._feed_seq
        return ConsentDecision(allowed, withheld, tuple(decision_ids), revision)

    async def _ask(
        self, recipient: str, purpose: str, dataset: str, subjects: Sequence[str]
    ) -> dict[str, Any]:
        request = {
            "controller": self.controller,
            "recipient": recipient,
            "purpose": purpose,
            "dataset": dataset,
            "subjects": list(subjects),
        }
        body = await _call(
            self._http, self._peers, self._audience, "POST", f"{self._api}/decisions", json=request
        )
        return _validated_decision(body, request)

    def _remember(
        self, key: tuple[str, str, str], asked: Sequence[str], granted: set[str], revision: int
    ) -> None:
        # An answer computed before a change the feed already delivered may be stale: not cached.
        if self._ttl <= 0 or not self._feed_live() or revision < self._feed_seq:
            return
        until = time.monotonic() + self._ttl
        for subject_hash in asked:
            self._cache.setdefault(subject_hash, {})[key] = (subject_hash in granted, until)

    def _feed_live(self) -> bool:
        return self.feed_connected.is_set() and time.monotonic() - self._feed_seen_at < FEED_SILENCE_SECONDS

    def forget_everything(self) -> None:
        self._cache.clear()

    # ---- transfer summaries ----------------------------------------------------------------

    async def report_transfer(
        self,
        transfer_id: str,
        recipient: str,
        purpose: str,
        dataset: str,
        transferred_at: datetime,
        records_per_subject: Mapping[str, int],
    ) -> dict[str, int]:
        """Tell the consent service how many records of each subject (raw ids, hashed here) went out.

        Counts are cumulative for the transfer: report the running totals, as often as wanted.
        """
        counts: dict[str, int] = {}
        for subject, records in records_per_subject.items():
            if records > 0:
                pseudonym = self.pseudonym(subject)
                counts[pseudonym] = counts.get(pseudonym, 0) + records
        answer: dict[str, int] = {"citizens": 0, "unmatched": 0}
        items = sorted(counts.items())
        for start in range(0, len(items), REPORT_BATCH):
            body = {
                "transfer_id": transfer_id,
                "recipient": recipient,
                "purpose": purpose,
                "dataset": dataset,
                "transferred_at": transferred_at.isoformat(),
                "subjects": [{"subject": h, "records": n} for h, n in items[start : start + REPORT_BATCH]],
            }
            reply = await _call(
                self._http, self._peers, self._audience, "POST", f"{self._api}/transfer-summaries", json=body
            )
            if not isinstance(reply, dict) or not all(isinstance(reply.get(k), int) for k in answer):
                raise ConsentUnavailable("the consent service's answer to a transfer report is not valid")
            for key in answer:
                answer[key] += reply[key]
        return answer

    # ---- the change feed --------------------------------------------------------------------

    def apply_change(self, kind: str, seq: int, data: dict[str, Any]) -> None:
        """One feed event: drop what it makes stale, and move the feed position."""
        self._feed_seen_at = time.monotonic()
        if kind in ("consent", "identifier"):
            for subject_hash in data.get("subjects", []):
                self._cache.pop(subject_hash, None)
        elif kind in ("agreement", "reset"):
            self._cache.clear()
        self._feed_seq = max(self._feed_seq, seq) if kind != "reset" else seq

    async def follow_changes(self, *, retry_seconds: float = 1.0) -> None:
        """Follow the change feed until cancelled, reconnecting with Last-Event-ID after a failure."""
        last_id: int | None = None
        while True:
            try:
                last_id = await self._follow_once(last_id)
            except (httpx.HTTPError, ConsentServiceError, ValueError):
                pass
            finally:
                self.feed_connected.clear()
                self._cache.clear()
            await asyncio.sleep(retry_seconds)

    async def _follow_once(self, last_id: int | None) -> int | None:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        headers["Authorization"] = self._peers.authorization_for(self._audience)
        timeout = httpx.Timeout(10.0, read=FEED_SILENCE_SECONDS)
        async with self._http.stream(
            "GET", f"{self._api}/changes", headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                raise ConsentUnavailable(f"the change feed answered HTTP {response.status_code}")
            event, seq, data = "message", None, ""
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    seq = int(line[3:].strip())
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and seq is not None:
                    payload = json.loads(data) if data else {}
                    self.apply_change(event, seq, payload if isinstance(payload, dict) else {})
                    last_id = seq
                    self.feed_connected.set()
                    event, seq, data = "message", None, ""
        return last_id


async def _call(
    http: httpx.AsyncClient, peers: PeerClient, audience: str, method: str, url: str, *, json: Any = None
) -> Any:
    try:
        response = await http.request(
            method, url, json=json, headers={"Authorization": peers.authorization_for(audience)}
        )
    except httpx.HTTPError as exc:
        raise ConsentUnavailable(f"the consent service cannot be reached: {type(exc).__name__}") from None
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise ConsentUnavailable("the consent service's answer is too large")
    try:
        body = response.json()
    except ValueError:
        raise ConsentUnavailable(
            f"the consent service answered HTTP {response.status_code} without JSON"
        ) from None
    if 400 <= response.status_code < 500 and isinstance(body, dict):
        code = body.get("error") if isinstance(body.get("error"), str) else "refused"
        message = body.get("message") or body.get("error_description") or body.get("detail")
        raise ConsentRequestRefused(response.status_code, str(code), str(message)[:500])
    if response.status_code != 200 and response.status_code != 201:
        raise ConsentUnavailable(f"the consent service answered HTTP {response.status_code}")
    return body


def _validated_decision(body: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The answer, if it is a decision about exactly this request; ConsentUnavailable otherwise."""
    if not isinstance(body, dict):
        raise ConsentUnavailable("the decision is not a JSON object")
    for name in ("controller", "recipient", "purpose", "dataset"):
        if body.get(name) != request[name]:
            raise ConsentUnavailable(f"the decision is about another {name}")
    decision_id, revision, allowed = body.get("decision_id"), body.get("revision"), body.get("allowed")
    if not isinstance(decision_id, str) or not decision_id or len(decision_id) > 128:
        raise ConsentUnavailable("the decision has no decision_id")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ConsentUnavailable("the decision has no revision")
    if not isinstance(allowed, list):
        raise ConsentUnavailable("the decision has no list of allowed subjects")
    asked = set(request["subjects"])
    for subject in allowed:
        if not isinstance(subject, str) or not SUBJECT_HASH.match(subject) or subject not in asked:
            raise ConsentUnavailable("the decision allows a subject that was not asked about")
    return body
