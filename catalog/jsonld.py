"""JSON-LD, done offline: vendored contexts, EDC's input forms, EDC-style compaction.

* ``document_loader`` serves the vendored contexts and refuses every other URL,
  so no request body can make the connector fetch anything (no SSRF).
* ``expand_management_input`` accepts what EDC's Management API accepts: an
  object ``@context`` without ``@vocab`` gets EDC's default vocabulary; keys may
  be bare, prefixed or full IRIs; ``null`` members mean "absent".
* ``compact_edc`` writes expanded JSON-LD back in the compacted form EDC
  clients read: bare keys for the EDC namespace, ``odrl:`` prefixes for ODRL,
  full IRIs for everything else, single values unwrapped.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from cachetools import LRUCache
from pyld import jsonld
from pyld.context_resolver import ContextResolver
from pyld.resolved_context import ResolvedContext

from catalog.vocabulary import DCAT_NS, DCT_NS, DSPACE_CONTEXT_URL, EDC_NS, ODRL_NS, TESSERA_NS

__all__ = ["DCAT_NS", "DCT_NS", "DSPACE_CONTEXT_URL", "EDC_NS", "ODRL_NS", "TESSERA_NS"]
EDC_MANAGEMENT_CONTEXT_URL = "https://w3id.org/edc/connector/management/v0.0.1"
ODRL_CONTEXT_URL = "http://www.w3.org/ns/odrl.jsonld"
# The context EDC adds beside the DSP one in its protocol messages.
EDC_DSPACE_CONTEXT_URL = "https://w3id.org/edc/dspace/v0.0.1"
# Tractus-X clients (its Python SDK) put this first in every ContractRequest they send.
TRACTUSX_POLICY_CONTEXT_URL = "https://w3id.org/tractusx/policy/v1.0.0"

# The context of every Management API response (EDC's default response context).
EDC_RESPONSE_CONTEXT: dict[str, str] = {"@vocab": EDC_NS, "edc": EDC_NS, "odrl": ODRL_NS}

MAX_DEPTH = 32
# Prefixes clients write for the vocabularies Tessera reads; left undefined in a body's @context, JSON-LD
# would keep "tessera:personal" as an IRI of its own and the checks on the real term would never see it.
_REGISTERED_PREFIXES = ("edc:", "odrl:", "dct:", "dcat:", "tessera:")


class JsonLdInputError(ValueError):
    """The body is not JSON-LD we can process; the message says why."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def _package_text(package: str, *parts: str) -> str:
    node = resources.files(package)
    for part in parts:
        node = node / part
    return node.read_text(encoding="utf-8")


@cache
def vendored_contexts() -> dict[str, dict[str, Any]]:
    """Context URL → document, for every context Tessera will ever load."""
    files = {
        DSPACE_CONTEXT_URL: ("reference", "dsp-2025-1", "context", "dspace.jsonld"),
        "https://w3id.org/dspace/2025/1/odrl-profile.jsonld": (
            "reference",
            "dsp-2025-1",
            "context",
            "odrl.jsonld",
        ),
        EDC_MANAGEMENT_CONTEXT_URL: ("contexts", "edc-management-v1.jsonld"),
        ODRL_CONTEXT_URL: ("contexts", "odrl.jsonld"),
        EDC_DSPACE_CONTEXT_URL: ("contexts", "edc-dspace-v1.jsonld"),
        TRACTUSX_POLICY_CONTEXT_URL: ("contexts", "tractusx-policy-v1.jsonld"),
    }
    raw = {url: json.loads(_package_text("catalog", *parts)) for url, parts in files.items()}
    return {
        url: {**document, "@context": _merge_imports(document["@context"], raw)}
        for url, document in raw.items()
    }


def _merge_imports(context: Any, documents: dict[str, dict[str, Any]]) -> Any:
    """``context`` with every ``@import`` replaced by the imported context's terms (JSON-LD 1.1:
    the importing context's own entries win). pyld implements ``@import`` by editing its cached copy
    of the imported context in place, so a cached context would change between requests; merged
    here once, nothing pyld sees ever imports and its context cache is safe to share."""
    if isinstance(context, list):
        return [_merge_imports(item, documents) for item in context]
    if not isinstance(context, dict):
        return context
    merged = {
        key: (
            {**value, "@context": _merge_imports(value["@context"], documents)}
            if isinstance(value, dict) and "@context" in value
            else value
        )
        for key, value in context.items()
        if key != "@import"
    }
    if "@import" not in context:
        return merged
    url = context["@import"]
    imported = documents.get(url) if isinstance(url, str) else None
    if imported is None or not isinstance(imported.get("@context"), dict):
        raise JsonLdInputError(f"@import {url!r} is not a context Tessera knows", "@context")
    if "@import" in imported["@context"]:
        raise JsonLdInputError("an @import-ed context must not @import another", "@context")
    return {**copy.deepcopy(imported["@context"]), **merged}


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyld document loader: vendored documents only; anything else is refused, never fetched."""
    document = vendored_contexts().get(url)
    if document is None:
        raise jsonld.JsonLdError(
            f"context {url} is not one Tessera knows; remote contexts are never fetched",
            "jsonld.LoadDocumentError",
            {"url": url},
            code="loading remote context failed",
        )
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        # pyld keeps a resolved remote context in a shared cache only when its document carries a tag
        # looked up as "static": ours never change.
        "tag": "static",
        # A copy: pyld edits an @import-ed context in place, which would change our vendored one.
        "document": copy.deepcopy(document),
    }


class _UncachedContextResolver(ContextResolver):  # type: ignore[misc]  # pyld is untyped
    """pyld's context resolver without its caches.

    pyld edits a resolved context in place when another context ``@import``s
    it (adding ``@propagate`` and the importer's terms). Cached, that edited
    context is what the next use of the same context gets: a policy that
    names the ODRL context inside EDC's management context failed with a
    KeyError (HTTP 500), and the edit leaked into every later request.
    """

    def _get(self, key: str) -> Any:
        return None

    def _cache_resolved_context(self, key: str, resolved: Any, tag: Any) -> Any:
        return resolved


def jsonld_options() -> dict[str, Any]:
    """pyld options for one operation: the offline loader and a resolver that shares nothing."""
    return {
        "documentLoader": document_loader,
        "base": None,
        "contextResolver": _UncachedContextResolver({}, document_loader),
    }


# Contexts resolved and processed once, shared by every Management API expansion. Safe because those
# documents reach pyld with every context inlined and every @import merged (``_prepare``); bounded
# because a client chooses the inline contexts it sends. pyld's caches are not thread-safe: one lock.
_SHARED_CONTEXTS: LRUCache[str, Any] = LRUCache(maxsize=64)
_SHARED_CONTEXTS_LOCK = threading.Lock()


def _context_key(context: Any) -> str:
    """A cache key equal for equal JSON contexts: C-speed ``json.dumps`` with sorted keys."""
    return json.dumps(context, sort_keys=True, separators=(",", ":"), default=dict)


# The key of a context object pyld hands over again and again: a scoped context inside a cached
# vendored context (the ODRL terms under EDC's ``policy``) is the same object at every use, and its
# sorted JSON (4.7 kB) was made three times per Management API expansion. Each entry holds its object,
# so while it is cached no other object can have its id. Guarded by ``_SHARED_CONTEXTS_LOCK``.
_KEYS_BY_OBJECT: LRUCache[int, tuple[Any, str]] = LRUCache(maxsize=256)


def _remembered_context_key(context: Any) -> str:
    entry = _KEYS_BY_OBJECT.get(id(context))
    if entry is not None and entry[0] is context:
        return entry[1]
    key = _context_key(context)
    _KEYS_BY_OBJECT[id(context)] = (context, key)
    return key


class _QuickKeyContextResolver(ContextResolver):  # type: ignore[misc]  # pyld is untyped
    """pyld's resolver, keying the contexts written inline in a document by their sorted JSON.

    pyld keys an inline context by its RFC 8785 form, made by a pure-Python canonicaliser on every
    expansion; every Management API body arrives with EDC's whole context inlined (``_prepare``),
    so that was 4 % of a consumer's CPU in the negotiation benchmark. Sorted JSON tells the same
    contexts apart (it may tell more apart, e.g. ``1`` from ``1.0``: only a cache miss).
    """

    def resolve(self, active_ctx: Any, context: Any, base: Any, cycles: Any = None) -> list[Any]:
        if isinstance(context, Mapping) and "@context" in context:
            context = context["@context"]
        resolved: list[Any] = []
        for item in context if isinstance(context, list) else [context]:
            if not isinstance(item, Mapping):  # a URL, null, or an error pyld reports
                resolved.extend(super().resolve(active_ctx, [item], base, cycles))
                continue
            key = _remembered_context_key(item)
            found = self._get(key) or self._cache_resolved_context(key, ResolvedContext(item), "static")
            resolved.append(found)
        return resolved


def _expand_with_shared_contexts(document: dict[str, Any]) -> list[Any]:
    options = {
        "documentLoader": document_loader,
        "base": None,
        "contextResolver": _QuickKeyContextResolver(_SHARED_CONTEXTS, document_loader),
    }
    with _SHARED_CONTEXTS_LOCK:
        result: list[Any] = jsonld.expand(document, options)
    return result


def expand_with_known_contexts(document: dict[str, Any]) -> list[Any]:
    """Expand a document that names only vendored contexts, through the shared context cache.

    JsonLdInputError for a context Tessera does not hold; pyld's JsonLdError for invalid JSON-LD.
    """
    return _expand_with_shared_contexts(_prepare(document))


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse documents nested deeper than ``limit`` (iteratively: no recursion to exhaust),
    and text with NUL characters, which PostgreSQL cannot store (SQLite would: refuse on both)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise JsonLdInputError(f"the document is nested deeper than {limit} levels")
        if isinstance(node, str) and "\x00" in node:
            raise JsonLdInputError("text in the document contains a NUL character (\\u0000)")
        if isinstance(node, dict):
            if any("\x00" in key for key in node):
                raise JsonLdInputError("a key in the document contains a NUL character (\\u0000)")
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None or k == "@context"}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def _inline_known_contexts(context: Any) -> Any:
    """Replace known context URLs by their documents' contexts; refuse unknown URLs up front."""
    if isinstance(context, str):
        if context not in vendored_contexts():
            raise JsonLdInputError(
                f"context {context!r} is not one Tessera knows; remote contexts are never fetched", "@context"
            )
        # Left as a URL: pyld resolves it through the loader once and caches it by URL.
        return context
    if isinstance(context, list):
        return [_inline_known_contexts(item) for item in context]
    if isinstance(context, dict):
        inlined = {
            key: (
                {**value, "@context": _inline_known_contexts(value["@context"])}
                if isinstance(value, dict) and "@context" in value
                else value
            )
            for key, value in context.items()
        }
        return _merge_imports(inlined, vendored_contexts())
    if context is None:
        return None
    raise JsonLdInputError("@context must be a string, an object or an array", "@context")


def _prepare(value: Any) -> Any:
    """Inline contexts at every level of the document."""
    if isinstance(value, dict):
        prepared = {k: _prepare(v) for k, v in value.items() if k != "@context"}
        if "@context" in value:
            prepared["@context"] = _inline_known_contexts(value["@context"])
        return prepared
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    return value


def _with_default_vocab(context: Any) -> Any:
    # EDC adds its vocabulary only to an object context that has none; so do we.
    if context is None:
        return {"@vocab": EDC_NS}
    if isinstance(context, dict) and "@vocab" not in context:
        return {**context, "@vocab": EDC_NS}
    return context


def _unexpanded_prefix(value: Any, path: str = "") -> str | None:
    if isinstance(value, dict):
        for key, child in value.items():
            if key.startswith(_REGISTERED_PREFIXES):
                return f"{path}/{key}"
            if key in ("@type", "@id"):
                for item in child if isinstance(child, list) else [child]:
                    if isinstance(item, str) and item.startswith(_REGISTERED_PREFIXES):
                        return f"{path}/{key}"
            found = _unexpanded_prefix(child, f"{path}/{key}")
            if found:
                return found
    elif isinstance(value, list):
        for child in value:
            found = _unexpanded_prefix(child, path)
            if found:
                return found
    return None


def expand_management_input(body: Any) -> dict[str, Any]:
    """Expand a Management API request body to one expanded JSON-LD node."""
    if not isinstance(body, dict):
        raise JsonLdInputError("the body must be a JSON object")
    check_depth(body)
    document = _drop_nulls(body)
    document["@context"] = _with_default_vocab(document.get("@context"))
    document = _prepare(document)
    try:
        expanded = _expand_with_shared_contexts(document)
    except jsonld.JsonLdError as exc:
        raise JsonLdInputError(f"the body is not valid JSON-LD: {jsonld_reason(exc)}") from None
    if len(expanded) != 1 or not isinstance(expanded[0], dict):
        raise JsonLdInputError("the body must describe exactly one JSON-LD node")
    node: dict[str, Any] = expanded[0]
    bad = _unexpanded_prefix(node)
    if bad:
        raise JsonLdInputError(f"a prefix at {bad} is not defined in the @context", bad)
    return node


def jsonld_reason(exc: BaseException) -> str:
    """What went wrong, in one line. pyld wraps a refused context URL in generic errors
    ("... perhaps due to a same-origin policy ..."): the innermost cause names the URL."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    message = str(exc.args[0] if exc.args else exc).splitlines()[0]
    return message[:300]


# ---------------------------------------------------------------- reading expanded nodes


def values(node: dict[str, Any], iri: str) -> list[Any]:
    """The expanded values of property ``iri`` (always a list)."""
    found = node.get(iri, [])
    return found if isinstance(found, list) else [found]


def first_value(node: dict[str, Any], iri: str) -> Any:
    """The first plain value (``@value`` or ``@id``) of ``iri``, or None."""
    for item in values(node, iri):
        if isinstance(item, dict):
            if "@value" in item:
                return item["@value"]
            if "@id" in item:
                return item["@id"]
        else:
            return item
    return None


def first_node(node: dict[str, Any], iri: str) -> dict[str, Any] | None:
    for item in values(node, iri):
        if isinstance(item, dict) and "@value" not in item:
            return item
    return None


def node_type(node: dict[str, Any]) -> list[str]:
    types = node.get("@type", [])
    return types if isinstance(types, list) else [types]


# ---------------------------------------------------------------- compaction


def compact_iri(iri: str) -> str:
    if iri.startswith(EDC_NS) and len(iri) > len(EDC_NS):
        return iri[len(EDC_NS) :]
    if iri.startswith(ODRL_NS) and len(iri) > len(ODRL_NS):
        return "odrl:" + iri[len(ODRL_NS) :]
    return iri


def _compact_value(item: Any, compact: Callable[[str], str]) -> Any:
    if not isinstance(item, dict):
        return item
    if "@value" in item:
        if "@type" in item or "@language" in item:
            return {k: (compact(v) if k == "@type" else v) for k, v in item.items()}
        return item["@value"]
    if "@list" in item:
        return {"@list": [_compact_value(v, compact) for v in item["@list"]]}
    if set(item) == {"@id"}:
        return {"@id": compact(item["@id"])}
    return _compact_node(item, compact)


def _compact_node(node: dict[str, Any], compact: Callable[[str], str] = compact_iri) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "@id":
            out["@id"] = value
        elif key == "@type":
            types = [compact(t) for t in (value if isinstance(value, list) else [value])]
            out["@type"] = types[0] if len(types) == 1 else types
        else:
            items = [_compact_value(v, compact) for v in (value if isinstance(value, list) else [value])]
            out[compact(key)] = items[0] if len(items) == 1 else items
    return out


def compact_iri_with(prefixes: dict[str, str]) -> Callable[[str], str]:
    """An IRI compactor for a context of prefixes only (e.g. {"dct": DCT_NS})."""

    def compact(iri: str) -> str:
        for prefix, namespace in prefixes.items():
            if iri.startswith(namespace) and len(iri) > len(namespace):
                return f"{prefix}:{iri[len(namespace) :]}"
        return iri

    return compact


def compact_node_with(node: dict[str, Any], compact: Callable[[str], str]) -> dict[str, Any]:
    """Compact an expanded node's keys, types and ids with ``compact``; single values unwrapped."""
    return _compact_node(node, compact)


def compact_edc(node: dict[str, Any]) -> dict[str, Any]:
    """Compact one expanded node with EDC's response context; the context is included."""
    compacted = _compact_node(node)
    compacted["@context"] = dict(EDC_RESPONSE_CONTEXT)
    return compacted
