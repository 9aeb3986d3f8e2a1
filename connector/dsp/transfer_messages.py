"""DSP 2025-1 transfer process messages, as they travel (compacted JSON-LD)."""

from __future__ import annotations

from typing import Any

from catalog.vocabulary import DSPACE_CONTEXT_URL, TESSERA_NS
from connector.transfer_states import Message

# The purpose the consumer declares travels as an extension member; peers that do not know it ignore it.
PURPOSE_MEMBER = TESSERA_NS + "purpose"

SCHEMA_OF = {
    Message.REQUEST: "transfer-request-message-schema",
    Message.START: "transfer-start-message-schema",
    Message.SUSPENSION: "transfer-suspension-message-schema",
    Message.COMPLETION: "transfer-completion-message-schema",
    Message.TERMINATION: "transfer-termination-message-schema",
}


def _base(message: Message, provider_pid: str | None, consumer_pid: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"@context": [DSPACE_CONTEXT_URL], "@type": message.value}
    if provider_pid is not None:
        body["providerPid"] = provider_pid
    if consumer_pid is not None:
        body["consumerPid"] = consumer_pid
    return body


def request_message(
    consumer_pid: str,
    agreement_id: str,
    transfer_format: str,
    callback: str,
    *,
    data_address: dict[str, Any] | None = None,
    purpose: str | None = None,
) -> dict[str, Any]:
    body = _base(Message.REQUEST, None, consumer_pid)
    body["agreementId"] = agreement_id
    body["format"] = transfer_format
    body["callbackAddress"] = callback
    if data_address is not None:
        body["dataAddress"] = data_address
    if purpose is not None:
        body[PURPOSE_MEMBER] = purpose
    return body


def start_message(
    provider_pid: str, consumer_pid: str, data_address: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = _base(Message.START, provider_pid, consumer_pid)
    if data_address is not None:
        body["dataAddress"] = data_address
    return body


def simple_message(message: Message, provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    """A completion message, or a suspension or termination without a reason."""
    return _base(message, provider_pid, consumer_pid)


def reasoned_message(
    message: Message, provider_pid: str, consumer_pid: str, code: str, reason: str
) -> dict[str, Any]:
    """A suspension or termination saying why."""
    body = _base(message, provider_pid, consumer_pid)
    body["code"] = code
    body["reason"] = [reason]
    return body


def transfer_object(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    return {
        "@context": [DSPACE_CONTEXT_URL],
        "@type": "TransferProcess",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state,
    }


def data_address(endpoint_type: str, endpoint: str, properties: dict[str, str]) -> dict[str, Any]:
    """A DSP DataAddress with its endpoint properties."""
    address: dict[str, Any] = {"@type": "DataAddress", "endpointType": endpoint_type, "endpoint": endpoint}
    if properties:
        address["endpointProperties"] = [
            {"@type": "EndpointProperty", "name": name, "value": value} for name, value in properties.items()
        ]
    return address


def endpoint_properties(address: dict[str, Any]) -> dict[str, str]:
    """A DataAddress's endpoint properties by name."""
    found: dict[str, str] = {}
    for item in address.get("endpointProperties") or []:
        if (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("value"), str)
        ):
            found[item["name"]] = item["value"]
    return found
