"""DSP 2025-1 contract negotiation messages, as they travel (compacted JSON-LD)."""

from __future__ import annotations

from typing import Any

from catalog.vocabulary import DSPACE_CONTEXT_URL, TESSERA_NS
from contracts.negotiation import Message

# Signatures travel as an extension member; peers that do not know it ignore it.
SIGNATURE_MEMBER = TESSERA_NS + "signature"

SCHEMA_OF = {
    Message.REQUEST: "contract-request-message-schema",
    Message.OFFER: "contract-offer-message-schema",
    Message.ACCEPTED: "contract-negotiation-event-message-schema",
    Message.AGREEMENT: "contract-agreement-message-schema",
    Message.VERIFICATION: "contract-agreement-verification-message-schema",
    Message.FINALIZED: "contract-negotiation-event-message-schema",
    Message.TERMINATION: "contract-negotiation-termination-message-schema",
}
DSP_TYPE_OF = {
    Message.REQUEST: "ContractRequestMessage",
    Message.OFFER: "ContractOfferMessage",
    Message.ACCEPTED: "ContractNegotiationEventMessage",
    Message.AGREEMENT: "ContractAgreementMessage",
    Message.VERIFICATION: "ContractAgreementVerificationMessage",
    Message.FINALIZED: "ContractNegotiationEventMessage",
    Message.TERMINATION: "ContractNegotiationTerminationMessage",
}


def _base(message: Message, provider_pid: str | None, consumer_pid: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"@context": [DSPACE_CONTEXT_URL], "@type": DSP_TYPE_OF[message]}
    if provider_pid is not None:
        body["providerPid"] = provider_pid
    if consumer_pid is not None:
        body["consumerPid"] = consumer_pid
    return body


def request_message(
    consumer_pid: str, offer: dict[str, Any], *, provider_pid: str | None = None, callback: str | None = None
) -> dict[str, Any]:
    body = _base(Message.REQUEST, provider_pid, consumer_pid)
    body["offer"] = offer
    if callback is not None:
        body["callbackAddress"] = callback
    return body


def offer_message(
    provider_pid: str, offer: dict[str, Any], *, consumer_pid: str | None = None, callback: str | None = None
) -> dict[str, Any]:
    body = _base(Message.OFFER, provider_pid, consumer_pid)
    body["offer"] = offer
    if callback is not None:
        body["callbackAddress"] = callback
    return body


def event_message(event: Message, provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    body = _base(event, provider_pid, consumer_pid)
    body["eventType"] = event.value
    return body


def agreement_message(
    provider_pid: str, consumer_pid: str, agreement: dict[str, Any], signature: str | None
) -> dict[str, Any]:
    body = _base(Message.AGREEMENT, provider_pid, consumer_pid)
    body["agreement"] = agreement
    if signature is not None:
        body[SIGNATURE_MEMBER] = signature
    return body


def verification_message(provider_pid: str, consumer_pid: str, signature: str | None) -> dict[str, Any]:
    body = _base(Message.VERIFICATION, provider_pid, consumer_pid)
    if signature is not None:
        body[SIGNATURE_MEMBER] = signature
    return body


def termination_message(provider_pid: str, consumer_pid: str, code: str, reason: str) -> dict[str, Any]:
    body = _base(Message.TERMINATION, provider_pid, consumer_pid)
    body["code"] = code
    body["reason"] = [reason]
    return body


def negotiation_object(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    return {
        "@context": [DSPACE_CONTEXT_URL],
        "@type": "ContractNegotiation",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state,
    }


def incoming_kind(message: dict[str, Any]) -> Message | None:
    """Which negotiation message a (normalised) DSP message is."""
    dsp_type = message.get("@type")
    if dsp_type == "ContractNegotiationEventMessage":
        event = message.get("eventType")
        return (
            Message.ACCEPTED if event == "ACCEPTED" else Message.FINALIZED if event == "FINALIZED" else None
        )
    for kind, name in DSP_TYPE_OF.items():
        if name == dsp_type and dsp_type != "ContractNegotiationEventMessage":
            return kind
    return None
