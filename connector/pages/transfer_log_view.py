"""``/ui/transfer-log``: the log's newest checkpoint, the members' logs this connector witnesses, and alerts.

Read-only: it shows what ``/management/v3/transferlog/{checkpoint,witnessed,alerts}`` return,
for an operator who should see at a glance whether a member's log forked, shrank or was rewritten.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from connector.pages.auth import signed_in
from connector.pages.render import page
from connector.translog.bundle import newest_checkpoint
from connector.translog.store import tree_size
from connector.translog.witness import list_alerts, list_witnessed
from runtime.dependencies import service_core


def transfer_log_page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/transfer-log")
    def transfer_log(request: Request, csrf: str = Depends(signed_in)) -> HTMLResponse:
        core = service_core(request)
        with core.engine.connect() as conn:
            size = tree_size(conn)
        checkpoint = newest_checkpoint(core.engine, core.settings.did)
        alerts = list_alerts(core.engine)
        return page(
            request,
            "transfer_log.html",
            title="Transfer log" + (f": {len(alerts)} alert(s)" if alerts else ""),
            csrf_token=csrf,
            section="transfer-log",
            size=size,
            checkpoint_size=checkpoint.checkpoint.size if checkpoint else None,
            checkpoint_root=base64.b64encode(checkpoint.checkpoint.root).decode() if checkpoint else None,
            checkpoint_at=checkpoint.signed_at if checkpoint else None,
            witnessed=list_witnessed(core.engine),
            alerts=alerts,
        )

    return router
