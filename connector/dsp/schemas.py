"""Validating DSP 2025-1 messages against the vendored JSON schemas, offline.

Every schema is registered under its ``$id`` (``https://w3id.org/dspace/2025/1/...``),
so cross-schema ``$ref``s resolve from the package and never from the network.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft201909Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

SCHEMA_BASE = "https://w3id.org/dspace/2025/1/"
_AREAS = ("catalog", "common", "negotiation", "transfer")


def _reference_root() -> Any:
    return resources.files("catalog") / "reference" / "dsp-2025-1"


@cache
def _load() -> tuple[Registry, dict[str, dict[str, Any]]]:
    by_name: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[str, Resource[Any]]] = []
    for area in _AREAS:
        for entry in (_reference_root() / area).iterdir():
            if not entry.name.endswith("-schema.json"):
                continue
            schema = json.loads(entry.read_text(encoding="utf-8"))
            by_name[entry.name.removesuffix(".json")] = schema
            pairs.append((schema["$id"], Resource.from_contents(schema, default_specification=DRAFT201909)))
    return Registry().with_resources(pairs), by_name


def schema_names() -> list[str]:
    return sorted(_load()[1])


@cache
def validator(name: str) -> Draft201909Validator:
    """The validator of schema ``name`` (e.g. ``catalog-request-message-schema``)."""
    registry, by_name = _load()
    try:
        schema = by_name[name]
    except KeyError:
        raise KeyError(f"no DSP schema named {name!r}") from None
    return Draft201909Validator(schema, registry=registry)


def errors(name: str, instance: Any) -> list[str]:
    """Human-readable validation errors of ``instance`` (empty when valid)."""
    found = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    messages = []
    for error in found:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        messages.append(f"{where}: {error.message}")
    return messages


def context_document(name: str) -> dict[str, Any]:
    """A vendored JSON-LD context (``dspace.jsonld`` or ``odrl.jsonld``)."""
    text = (_reference_root() / "context" / name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
