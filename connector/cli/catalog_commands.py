"""``tessera assets add|list|remove``, ``tessera catalog`` and ``tessera search``.

These talk to the running connector through its Management API (see
``management_client``): the connector must be serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from catalog.vocabulary import DCT_NS, DSP_PROTOCOL, EDC_NS, TESSERA_NS
from connector.cli.common import DirOption
from connector.cli.management_client import ManagementClient
from runtime.errors import StartupError

console = Console()
assets_app = typer.Typer(
    help="Assets this connector publishes (the connector must be running).", no_args_is_help=True
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QUERY_PAGE = 1000
CATALOG_PAGE = 500
MAX_CATALOG_DATASETS = 10_000
EDC_CONTEXT = {"@vocab": EDC_NS}


def _plain(value: Any) -> str:
    """A compacted JSON-LD value as one line of text."""
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return _plain(value.get("@value", value.get("@id", "")))
    if value is None:
        return ""
    return " ".join(str(value).split())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"{path} does not exist") from None
    except OSError as exc:
        raise StartupError(f"{path} cannot be read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StartupError(f"{path} is not JSON: {exc}") from None


# ---------------------------------------------------------------- assets


@assets_app.command("add")
def add_asset(
    file: Annotated[Path, typer.Option("--file", help="An EDC asset, as JSON-LD (the Management API body).")],
    data_dir: DirOption = Path("."),
) -> None:
    """Publish an asset; prints its id."""
    body = _read_json_file(file)
    answer = ManagementClient.for_participant(data_dir).call("POST", "/management/v3/assets", body)
    print(answer.body.get("@id") if isinstance(answer.body, dict) else answer.body)


def _all_assets(client: ManagementClient) -> list[dict[str, Any]]:
    assets: list[dict[str, Any]] = []
    while True:
        spec = {"@context": EDC_CONTEXT, "@type": "QuerySpec", "offset": len(assets), "limit": QUERY_PAGE}
        page = client.call("POST", "/management/v3/assets/request", spec).body
        assets.extend(page if isinstance(page, list) else [])
        if not isinstance(page, list) or len(page) < QUERY_PAGE:
            return assets


def _asset_property(asset: dict[str, Any], *names: str) -> str:
    properties = asset.get("properties")
    if not isinstance(properties, dict):
        return ""
    return next((_plain(properties[n]) for n in names if n in properties), "")


@assets_app.command("list")
def list_assets(data_dir: DirOption = Path("."), as_json: JsonOption = False) -> None:
    """List the assets this connector publishes."""
    assets = _all_assets(ManagementClient.for_participant(data_dir))
    if as_json:
        _print_json(assets)
        return
    table = Table(Column("id", overflow="fold"), "title", "publisher", "personal")
    for asset in assets:
        personal = _asset_property(asset, TESSERA_NS + "personal").lower() == "true"
        table.add_row(
            Text(_plain(asset.get("@id"))),
            Text(_asset_property(asset, DCT_NS + "title", "name")),
            Text(_asset_property(asset, DCT_NS + "publisher")),
            "yes" if personal else "no",
        )
    console.print(table)
    console.print(f"{len(assets)} asset(s)")


@assets_app.command("remove")
def remove_asset(
    asset_id: Annotated[str, typer.Option("--id", help="The asset's id.")], data_dir: DirOption = Path(".")
) -> None:
    """Stop publishing an asset (refused while a contract definition still needs it)."""
    client = ManagementClient.for_participant(data_dir)
    client.call("DELETE", f"/management/v3/assets/{quote(asset_id, safe='')}")
    print(f"removed {asset_id}")


# ---------------------------------------------------------------- catalog and search


def _names_of(did: str) -> set[str]:
    """What a member may be called: a did:web's host, its first label, and its path segments."""
    if not did.startswith("did:web:"):
        return set()
    host, *path = (unquote(part) for part in did[len("did:web:") :].split(":"))
    hostname = host.split(":")[0]
    return {host, hostname, hostname.split(".")[0], *path}


def resolve_participant(members: list[dict[str, Any]], query: str) -> dict[str, Any]:
    """The member ``query`` names: its DID, a name in its did:web, or a unique part of its DID."""
    exact = [m for m in members if m["participantId"] == query]
    named = [m for m in members if query in _names_of(m["participantId"])]
    partial = [m for m in members if query in m["participantId"]]
    for found in (exact, named, partial):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            dids = ", ".join(m["participantId"] for m in found)
            raise StartupError(f"{query!r} matches several members ({dids}): give more of the DID")
    known = ", ".join(m["participantId"] for m in members) or "none"
    raise StartupError(f"{query!r} is not a member of this data space (members: {known})")


def _next_offset(link: str | None) -> int | None:
    from connector.federated_crawler import next_link  # heavy: only where a catalog is paged

    target = next_link(link)
    if target is None:
        return None
    try:
        return int(parse_qs(urlsplit(target).query).get("offset", [""])[0])
    except ValueError:
        return None


def _remote_catalog(client: ManagementClient, member: dict[str, Any]) -> list[dict[str, Any]]:
    datasets: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None and len(datasets) < MAX_CATALOG_DATASETS:
        request = {
            "@context": EDC_CONTEXT,
            "@type": "CatalogRequest",
            "counterPartyId": member["participantId"],
            "counterPartyAddress": member["dspUrl"],
            "protocol": DSP_PROTOCOL,
            "querySpec": {"offset": offset, "limit": CATALOG_PAGE},
        }
        answer = client.call("POST", "/management/v3/catalog/request", request, timeout=60)
        page = answer.body.get("dataset", []) if isinstance(answer.body, dict) else []
        datasets.extend(page)
        following = _next_offset(answer.headers.get("link"))
        offset = following if following is not None and following > offset and page else None
    return datasets[:MAX_CATALOG_DATASETS]


def _offer_line(offer: dict[str, Any]) -> str:
    rules = []
    for kind in ("permission", "prohibition", "obligation"):
        found = offer.get(kind) or []
        for rule in found if isinstance(found, list) else [found]:
            if not isinstance(rule, dict):
                continue
            text = f"{kind} {_plain(rule.get('action'))}"
            constraints = rule.get("constraint") or []
            for constraint in constraints if isinstance(constraints, list) else [constraints]:
                if isinstance(constraint, dict) and "leftOperand" in constraint:
                    text += (
                        f" [{_plain(constraint['leftOperand'])} {_plain(constraint.get('operator'))}"
                        f" {_plain(constraint.get('rightOperand'))}]"
                    )
            rules.append(text)
    return f"offer {_plain(offer.get('@id'))}: {'; '.join(rules) or 'no rules'}"


def _print_dataset(dataset: dict[str, Any]) -> None:
    print(f"- {_plain(dataset.get('dct:title')) or '(untitled)'}  [{_plain(dataset.get('@id'))}]")
    details = [
        f"{label}: {_plain(dataset.get(key))}"
        for label, key in (
            ("publisher", "dct:publisher"),
            ("license", "dct:license"),
            ("type", "dcat:mediaType"),
        )
        if dataset.get(key) is not None
    ]
    personal = _plain(dataset.get(TESSERA_NS + "personal")).lower() == "true"
    print("  " + " · ".join([*details, f"personal: {'yes' if personal else 'no'}"]))
    offers = dataset.get("hasPolicy") or []
    for offer in offers if isinstance(offers, list) else [offers]:
        if isinstance(offer, dict):
            print("  " + _offer_line(offer))


def register_catalog_commands(app: typer.Typer) -> None:
    @app.command("catalog")
    def catalog_command(
        participant: Annotated[str, typer.Argument(help="A member: its DID, its name, or part of its DID.")],
        data_dir: DirOption = Path("."),
        as_json: JsonOption = False,
    ) -> None:
        """Show a member's catalog now (what its policies let us see), with the offers."""
        client = ManagementClient.for_participant(data_dir)
        member = resolve_participant(
            client.call("GET", "/management/v3/federatedcatalog/status").body, participant
        )
        datasets = _remote_catalog(client, member)
        if as_json:
            _print_json({"participantId": member["participantId"], "dataset": datasets})
            return
        print(f"{member['participantId']}: {len(datasets)} dataset(s)")
        for dataset in datasets:
            _print_dataset(dataset)

    @app.command("search")
    def search_command(
        words: Annotated[
            list[str] | None, typer.Argument(help="Words that must all occur (title, description, keywords).")
        ] = None,
        data_dir: DirOption = Path("."),
        publisher: Annotated[str | None, typer.Option("--publisher", help="Exactly this publisher.")] = None,
        theme: Annotated[str | None, typer.Option("--theme", help="Datasets with this theme.")] = None,
        license_: Annotated[str | None, typer.Option("--license", help="Exactly this licence.")] = None,
        participant: Annotated[
            str | None, typer.Option("--participant", help="Only this member's DID.")
        ] = None,
        personal: Annotated[
            bool | None, typer.Option("--personal/--no-personal", help="Only personal / non-personal data.")
        ] = None,
        offset: Annotated[int, typer.Option("--offset", help="Skip this many results.")] = 0,
        limit: Annotated[int, typer.Option("--limit", help="Show at most this many (1-200).")] = 20,
        crawl: Annotated[bool, typer.Option("--crawl", help="Crawl every member's catalog first.")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Search the members' catalogs as last crawled (the federated catalog)."""
        client = ManagementClient.for_participant(data_dir)
        if crawl:
            results = client.call("POST", "/management/v3/federatedcatalog/crawl", timeout=600).body
            if not as_json:
                _print_crawl(results)
        query = {
            "text": " ".join(words or []) or None,
            "publisher": publisher,
            "theme": theme,
            "license": license_,
            "participant": participant,
            "personal": personal,
            "offset": offset,
            "limit": limit,
        }
        page = client.call("POST", "/management/v3/federatedcatalog/request", query).body
        if as_json:
            _print_json(page)
            return
        _print_results(page)


def _print_crawl(results: list[dict[str, Any]]) -> None:
    ok = sum(1 for r in results if r["status"] == "ok")
    print(f"crawled {len(results)} member(s): {ok} ok")
    for result in results:
        if result["status"] != "ok" or result.get("error"):
            print(f"  {result['participantId']}: {result['status']}: {result.get('error')}")


def _print_results(page: dict[str, Any]) -> None:
    table = Table(
        Column("title", overflow="fold"),
        Column("participant", overflow="fold"),
        Column("dataset", overflow="fold"),
        "publisher",
        "personal",
    )
    for item in page["items"]:
        table.add_row(
            Text(item["title"] or "(untitled)"),
            Text(item["participantId"]),
            Text(item["datasetId"]),
            Text(item["publisher"] or ""),
            "yes" if item["personal"] else "no",
        )
    if page["items"]:
        console.print(table)
        first = page["offset"] + 1
        console.print(f"{first}-{page['offset'] + len(page['items'])} of {page['total']} dataset(s)")
    else:
        console.print(f"no datasets found ({page['total']} match)")
