"""DSP 2025-1 catalog protocol, provider side: ``/catalog/request`` and ``/catalog/datasets/{id}``.

Translates between the wire (compacted DSP JSON-LD) and the offering. The
tests validate every response shape against the DSP schemas; validating each
response at run time would cost more than building it (about 50 ms a page).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from catalog.assets import AssetRecord
from catalog.jsonld import DCAT_NS, DCT_NS, DSPACE_CONTEXT_URL, compact_iri_with, compact_node_with
from catalog.queryspec import Criterion, QuerySpecError, asset_condition, criterion_from_json
from connector.dsp.errors import DspError
from connector.dsp.messages import DspMessageError, normalise
from connector.offering import OfferedDataset, Offering
from contracts.offers import make_offer_id
from identity.peer_auth import Peer, authenticated_peer
from policies.decision import RequestContext
from policies.dsp_form import offer_to_dsp
from runtime.dependencies import db_session, service_core
from runtime.requests import BodyError, read_json
from runtime.settings import DSP_PATH

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_CATALOG_REQUEST_BYTES = 64 * 1024
TRANSFER_FORMATS = ("HttpData-PULL", "HttpData-PUSH")
_DCAT_COMPACT = compact_iri_with({"dct": DCT_NS, "dcat": DCAT_NS})
_HIDDEN_PROPERTIES = {"https://w3id.org/edc/v0.0.1/ns/id"}


def _catalog_error(status: int, *reasons: str) -> DspError:
    return DspError(status, "CatalogError", list(reasons))


def request_context(peer: Peer) -> RequestContext:
    return RequestContext(participant_id=peer.did, memberships=peer.memberships, stage="catalog")


def service_id(did: str) -> str:
    return f"{did}#dsp"


def data_service(did: str, dsp_url: str) -> dict[str, Any]:
    return {"@id": service_id(did), "@type": "DataService", "endpointURL": dsp_url}


def dataset_metadata(asset: AssetRecord) -> dict[str, Any]:
    """The asset's public properties as DCAT (dct:/dcat: keys; other vocabularies as full IRIs)."""
    visible = {k: v for k, v in asset.properties.items() if k not in _HIDDEN_PROPERTIES}
    return compact_node_with(visible, _DCAT_COMPACT)


def dataset_to_dsp(dataset: OfferedDataset, did: str) -> dict[str, Any]:
    asset = dataset.asset
    offers = [
        offer_to_dsp(
            offer.contract_policy.policy,
            make_offer_id(offer.contract_definition.id, asset.id, offer.contract_policy.policy_node),
            assigner=did,
        )
        for offer in dataset.offers
    ]
    distributions = [
        {"@type": "Distribution", "format": f, "accessService": service_id(did)} for f in TRANSFER_FORMATS
    ]
    return {
        **dataset_metadata(asset),
        "@id": asset.id,
        "@type": "Dataset",
        "hasPolicy": offers,
        "distribution": distributions,
    }


def _page_params(request: Request) -> tuple[int, int]:
    try:
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        raise _catalog_error(400, "offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
        raise _catalog_error(400, f"offset must be at least 0 and limit between 1 and {MAX_PAGE_SIZE}")
    return offset, limit


def _filter(message: dict[str, Any]) -> list[Criterion]:
    criteria = []
    for index, item in enumerate(message.get("filter") or []):
        try:
            criterion = criterion_from_json(item, f"filter/{index}")
            asset_condition(criterion)
        except QuerySpecError as exc:
            raise _catalog_error(400, f"filter {index}: {exc}") from None
        criteria.append(criterion)
    return criteria


def _links(dsp_url: str, offset: int, limit: int, has_more: bool) -> str | None:
    links = []
    base = f"{dsp_url}/catalog/request"
    if offset > 0:
        links.append(
            f'<{base}?{urlencode({"offset": max(0, offset - limit), "limit": limit})}>; rel="previous"'
        )
    if has_more:
        links.append(f'<{base}?{urlencode({"offset": offset + limit, "limit": limit})}>; rel="next"')
    return ", ".join(links) or None


def catalog_router() -> APIRouter:
    router = APIRouter(prefix=f"{DSP_PATH}/catalog", tags=["dsp catalog"])

    @router.post("/request")
    async def catalog_request(
        request: Request, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        try:
            body = await read_json(request, max_bytes=MAX_CATALOG_REQUEST_BYTES)
        except BodyError as exc:
            raise _catalog_error(exc.status, exc.message) from None
        try:
            message = normalise(body, "CatalogRequestMessage", "catalog-request-message-schema")
        except DspMessageError as exc:
            raise _catalog_error(400, *exc.reasons) from None
        criteria = _filter(message)
        offset, limit = _page_params(request)
        core = service_core(request)
        settings = core.settings

        def build() -> tuple[dict[str, Any], bool]:
            # Database and policy work: off the event loop.
            page = Offering(session, request_context(peer), core.policy_engine).page(criteria, offset, limit)
            catalog: dict[str, Any] = {
                "@context": [DSPACE_CONTEXT_URL],
                "@id": f"urn:tessera:catalog:{settings.did}",
                "@type": "Catalog",
                "participantId": settings.did,
                "service": [data_service(settings.did, settings.dsp_url)],
            }
            if page.datasets:  # the schema wants no "dataset" rather than an empty one
                catalog["dataset"] = [dataset_to_dsp(d, settings.did) for d in page.datasets]
            return catalog, page.has_more

        catalog, has_more = await run_in_threadpool(build)
        link = _links(settings.dsp_url, offset, limit, has_more)
        return JSONResponse(catalog, headers={"Link": link} if link else None)

    @router.get("/datasets/{dataset_id}")
    def dataset(
        dataset_id: str,
        request: Request,
        peer: Peer = Depends(authenticated_peer),
        session: Session = Depends(db_session),
    ) -> JSONResponse:
        core = service_core(request)
        settings = core.settings
        offered = Offering(session, request_context(peer), core.policy_engine).dataset(dataset_id)
        if offered is None:  # unknown and hidden look the same: nothing leaks about hidden datasets
            raise _catalog_error(404, f"dataset {dataset_id} is not in the catalog")
        body = {"@context": [DSPACE_CONTEXT_URL], **dataset_to_dsp(offered, settings.did)}
        return JSONResponse(body)

    return router
