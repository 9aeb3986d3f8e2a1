"""The connector's FastAPI app factory."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from connector.auditor.routes import audit_router
from connector.consent_gate import consent_gate_for
from connector.dataplane.public_routes import public_router
from connector.dataplane.sink import clean_partial_uploads, sink_router
from connector.discovery import discovery_router
from connector.dsp.catalog_routes import catalog_router
from connector.dsp.errors import DspError, dsp_error_body, dsp_error_response, error_type_for_path
from connector.dsp.negotiation_routes import negotiation_router
from connector.dsp.transfer_routes import transfer_router
from connector.edr_worker import EdrWorker
from connector.federated_crawler import FederatedCrawler
from connector.management.assets import assets_router
from connector.management.catalog import catalog_router as management_catalog_router
from connector.management.contract_definitions import contract_definitions_router
from connector.management.edrs import edrs_router
from connector.management.errors import install_management_error_handlers
from connector.management.federated import federated_catalog_router
from connector.management.negotiations import negotiations_router
from connector.management.policies import policies_router
from connector.management.transfers import transfers_router
from connector.negotiation_worker import NegotiationWorker
from connector.pages.routes import pages_router
from connector.peers import peers_router
from connector.transfer_push import Pusher
from connector.transfer_receipts import receipts_router
from connector.transfer_worker import TransferWorker
from connector.translog.indexer import LeafHashIndexer
from connector.translog.management import transfer_log_management_router
from connector.translog.routes import install_log_error_handler, transfer_log_router
from connector.translog.witness import LogWitness, Witness
from identity.did import dsp_services
from runtime.logging import get_logger
from runtime.service import ServiceCore, base_app


def create_app(core: ServiceCore) -> FastAPI:
    settings = core.settings
    interval = settings.catalog_crawl_interval_seconds
    crawler = FederatedCrawler(core.engine, core.peer_client, interval)
    worker = NegotiationWorker(core)
    pusher = Pusher(core, lambda: getattr(app.state, "personal_gate", None))
    transfer_worker = TransferWorker(core, pusher=pusher)
    consent_gate = consent_gate_for(core)
    witness_interval = settings.log_witness_interval_seconds
    log_witness = LogWitness(
        Witness(core.engine, settings.did, core.key, core.peer_client, core.metrics.registry),
        witness_interval,
    )
    edr_worker = EdrWorker(core, transfer_worker)
    app = base_app(
        core,
        title=f"Tessera connector {settings.name}",
        services=dsp_services(settings.did, settings.public_url, settings.dsp_url),
        background=[
            warm_policy_engine(core),
            clean_sink(core),
            worker.run,
            transfer_worker.run,
            edr_worker.run,
            *([crawler.run] if interval > 0 else []),
            *([consent_gate.follow_changes] if consent_gate is not None else []),
            *([log_witness.run] if witness_interval > 0 else []),
            LeafHashIndexer(core.engine).run,
        ],
    )
    app.state.personal_gate = consent_gate  # None: the data plane's closed gate (nothing personal leaves)
    app.state.crawler = crawler
    app.state.negotiation_worker = worker
    app.state.transfer_worker = transfer_worker
    app.state.log_witness = log_witness
    app.state.edr_worker = edr_worker
    # Hook for the DSP negotiation routes: an EDR negotiation's transfer starts the moment it is FINALIZED.
    app.state.on_negotiation_finalized = edr_worker
    install_management_error_handlers(app)
    install_log_error_handler(app)
    install_dsp_error_handlers(app)
    app.include_router(discovery_router())
    app.include_router(peers_router())
    app.include_router(catalog_router())
    app.include_router(negotiation_router())
    app.include_router(management_catalog_router())
    app.include_router(assets_router())
    app.include_router(policies_router())
    app.include_router(contract_definitions_router())
    app.include_router(pages_router())
    app.include_router(audit_router())
    app.include_router(federated_catalog_router())
    app.include_router(negotiations_router())
    app.include_router(transfer_router())
    app.include_router(transfers_router())
    app.include_router(public_router())
    app.include_router(sink_router(settings.data_dir))
    app.include_router(transfer_log_router())
    app.include_router(receipts_router())
    app.include_router(transfer_log_management_router())
    app.include_router(edrs_router())
    return app


def _dsp_auth_error_shape(path: str, message: str) -> dict[str, Any] | None:
    error_type = error_type_for_path(path)
    if error_type is None:
        return None
    # Negotiation and transfer errors must name both pids; an unauthenticated request has none we trust.
    ids = {} if error_type == "CatalogError" else {"providerPid": "unknown", "consumerPid": "unknown"}
    return dsp_error_body(error_type, 401, [message], **ids)


def install_dsp_error_handlers(app: FastAPI) -> None:
    app.state.auth_error_shape = _dsp_auth_error_shape

    @app.exception_handler(DspError)
    async def dsp_error(_request: Request, exc: DspError) -> JSONResponse:
        return dsp_error_response(exc)


def warm_policy_engine(core: ServiceCore) -> Callable[[], Coroutine[Any, Any, None]]:
    """A start-up job: load (and if need be compile) the policy engine before the first request needs it.

    Not in ``create_app`` itself: an app must be buildable while its database is down (``/health``
    then says so); a failure here only means the first decision loads the engine instead.
    """

    async def warm() -> None:
        try:
            await run_in_threadpool(lambda: core.policy_engine)
        except Exception as exc:
            get_logger("tessera.policy").warning(
                "policy engine not loaded at start-up", error=type(exc).__name__
            )

    return warm


def clean_sink(core: ServiceCore) -> Callable[[], Coroutine[Any, Any, None]]:
    """A start-up job: remove what pushes cut short by a crash left in ``<data_dir>/sink/``.

    Uploads cut while this process runs clean up after themselves; only a crash leaves
    a partial file or a lock behind, and the sink ignores both until they are removed.
    """

    async def clean() -> None:
        try:
            removed = await run_in_threadpool(clean_partial_uploads, core.settings.data_dir)
        except OSError as exc:
            get_logger("tessera.sink").warning("sink not cleaned at start-up", error=type(exc).__name__)
            return
        if removed:
            get_logger("tessera.sink").info("partial uploads removed at start-up", files=removed)

    return clean
