"""Inbound DSP messages: one compacted form, validated against the DSP 2025-1 schemas.

A message whose ``@context`` is the DSP 2025-1 context (EDC adds its own
context beside it) is already in the compacted form we read, so it is used as
plain JSON, as the specification allows. Anything else is expanded with the
offline loader and compacted to the DSP context first, so clients may send
any equivalent JSON-LD; contexts we do not hold are refused, never fetched.
"""

from __future__ import annotations

from typing import Any

from pyld import jsonld

from catalog.jsonld import (
    DSPACE_CONTEXT_URL,
    EDC_DSPACE_CONTEXT_URL,
    JsonLdInputError,
    check_depth,
    jsonld_options,
    jsonld_reason,
)
from connector.dsp import schemas

_PLAIN_CONTEXTS = {DSPACE_CONTEXT_URL, EDC_DSPACE_CONTEXT_URL}


class DspMessageError(ValueError):
    """The message is not acceptable; ``reasons`` go into the protocol error body."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _is_plain(context: Any) -> bool:
    items = context if isinstance(context, list) else [context]
    return DSPACE_CONTEXT_URL in items and all(isinstance(i, str) and i in _PLAIN_CONTEXTS for i in items)


def normalise(message: Any, expected_type: str, schema: str) -> dict[str, Any]:
    """The message in DSP-compacted form, or DspMessageError saying what is wrong."""
    if not isinstance(message, dict):
        raise DspMessageError(["the message must be a JSON object"])
    try:
        check_depth(message)
    except JsonLdInputError as exc:
        raise DspMessageError([str(exc)]) from None
    context = message.get("@context")
    if not _is_plain(context):
        try:
            expanded = jsonld.expand(message, jsonld_options())
            message = jsonld.compact(expanded, {"@context": [DSPACE_CONTEXT_URL]}, jsonld_options())
        except jsonld.JsonLdError as exc:
            raise DspMessageError(
                [f"the message is not JSON-LD Tessera can read: {jsonld_reason(exc)}"]
            ) from None
        message["@context"] = [DSPACE_CONTEXT_URL]
    if message.get("@type") != expected_type:
        raise DspMessageError([f"expected a {expected_type}, not {message.get('@type')!r}"])
    problems = schemas.errors(schema, message)
    if problems:
        raise DspMessageError(problems[:10])
    normalised: dict[str, Any] = message
    return normalised
