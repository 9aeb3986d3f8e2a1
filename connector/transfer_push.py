"""Push transfers, the provider's side: once the consumer has acknowledged the start, send the data.

The push is one access under usage control (``data_access.authorize_push``),
streams the asset's source (through the personal-data gate for personal
assets) into the endpoint the consumer named, with retries and backoff
(``connector.dataplane.push``), and then ends the transfer over DSP:
COMPLETED when the endpoint took everything, TERMINATED with the reason
when it did not. A suspension or termination while pushing stops the push.

The consumer's destination travels as a DSP DataAddress (``endpoint``,
``endpointProperties`` ``authorization``/``authType``); ``push_target``
turns it into the request the data plane sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from connector.consent_gate import batch_size_for, open_release, report_release
from connector.data_access import AccessDenied, Served, TransferStop, add_bytes, authorize_push
from connector.dataplane.asset_stream import open_asset_stream
from connector.dataplane.gate import ClosedGate, GateContext, PersonalDataGate
from connector.dataplane.gated_stream import GatedStream
from connector.dataplane.meter import PayloadMeter
from connector.dataplane.push import PushFailed, PushTarget, push
from connector.dataplane.sources import SourceConfig, SourceError, open_source
from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfer_states import Message
from connector.transfers import end_by_provider
from runtime.logging import get_logger
from runtime.service import ServiceCore

log = get_logger("tessera.push")


def push_target(destination: dict[str, Any]) -> PushTarget:
    """Where and how to push, from the consumer's DSP DataAddress (or an EDC HttpData one)."""
    if "endpointProperties" in destination or destination.get("@type") == "DataAddress":
        properties = endpoint_properties(destination)
        headers: dict[str, str] = {}
        token = properties.get("authorization")
        if token is not None:
            bearer = properties.get("authType", "bearer").lower() == "bearer"
            headers["Authorization"] = f"Bearer {token}" if bearer else token
        elif "authKey" in properties and "authCode" in properties:
            headers[properties["authKey"]] = properties["authCode"]
        return PushTarget(str(destination.get("endpoint", "")), headers)
    return PushTarget.from_data_address(destination)


class Pusher:
    """The transfer worker's ``pusher``: pushes one transfer, then queues its completion or termination."""

    def __init__(
        self, core: ServiceCore, gate_of: Callable[[], PersonalDataGate | None] = lambda: None
    ) -> None:
        self._core = core
        self._gate_of = gate_of  # the app's current gate (the consent issue plugs its client in)

    @property
    def gate(self) -> PersonalDataGate:
        return self._gate_of() or ClosedGate()

    def _end(
        self, transfer_id: str, message: Message, reason: str, sent: int, served: Served | None = None
    ) -> None:
        with Session(self._core.engine) as session:
            add_bytes(session, transfer_id, sent, None, served)
            row = session.get(TransferRow, transfer_id, with_for_update=True)
            if row is not None:
                end_by_provider(session, row, message, "push", reason)

    async def __call__(self, transfer_id: str) -> None:
        core = self._core
        # The row and asset are read after the commit that counts the access: keep them loaded.
        with Session(core.engine, expire_on_commit=False) as session:
            try:
                access = await run_in_threadpool(authorize_push, session, core, transfer_id)
            except AccessDenied as exc:
                log.info("push refused", transfer=transfer_id, reason=exc.reason)
                if not exc.ended:  # a usage denial has queued the end already; anything else ends it here
                    await run_in_threadpool(self._end, transfer_id, Message.TERMINATION, exc.message, 0)
                return
        row, asset = access.transfer, access.asset
        config = SourceConfig.for_data_dir(core.settings.data_dir)
        # The declared purpose: the consent gate checks that the agreement binds it.
        context = GateContext(core.settings.did, row.counter_party_did, row.purpose or "", asset.id, row.id)
        stop = TransferStop(core.engine, transfer_id)
        try:
            target = push_target(json.loads(row.data_destination or "{}"))
            probe = await open_source(asset.data_address, config)  # the media type, and a clear early failure
            media_type = probe.media_type
            await probe.aclose()
        except (ValueError, SourceError) as exc:
            await run_in_threadpool(self._end, transfer_id, Message.TERMINATION, f"push failed: {exc}", 0)
            return
        gate = self.gate
        # The last attempt's measure of what it sent (each attempt restarts from the first byte).
        attempt: dict[str, Any] = {}

        async def stream() -> AsyncIterator[bytes]:
            # Each attempt opens the asset afresh (gated when personal; a live source ends when the
            # transfer stops being STARTED).
            release = open_release(gate)  # consent: answers reused within this attempt only
            opened = await open_asset_stream(
                asset, config, gate=release, context=context, stop=stop, batch_size=batch_size_for(release)
            )
            meter = PayloadMeter(media_type)
            attempt.update(meter=meter, gated=opened.gated)
            try:
                async for chunk in opened.chunks:
                    meter.update(chunk)
                    yield chunk
            finally:
                await opened.aclose()
                if opened.gated is not None:
                    report_release(opened.gated)  # the citizens' "who received my data"

        def served() -> Served | None:
            meter: PayloadMeter | None = attempt.get("meter")
            if meter is None:
                return None
            gated: GatedStream | None = attempt.get("gated")
            return Served(meter.sha256, meter.records(gated), gated.counters if gated is not None else None)

        def stopped() -> bool:
            return stop()

        try:
            result = await push(stream, target, media_type=media_type, stop=stopped)
        except PushFailed as exc:
            log.warning("push failed", transfer=transfer_id, reason=exc.reason, attempts=exc.attempts)
            await run_in_threadpool(
                self._end,
                transfer_id,
                Message.TERMINATION,
                f"push failed: {exc.reason}",
                exc.bytes_sent,
                served(),
            )
            return
        log.info("push complete", transfer=transfer_id, bytes=result.bytes_sent, attempts=result.attempts)
        await run_in_threadpool(self._end, transfer_id, Message.COMPLETION, "", result.bytes_sent, served())
