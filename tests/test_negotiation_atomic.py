"""A message from the counter-party is applied in one transaction: all of it, or none of it.

A connector that stops (or fails) midway through applying a message must not leave part of it
recorded: the counter-party retries the message it got no answer to, and a half-recorded step
would then be taken for a repeat of a finished one and answered without the rest being done.
The failure is injected where the step queues our next message, after the state, the agreement
or the signature have been written in the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connector import negotiations as negotiations_module
from contracts.negotiation import Message
from tests.conftest import Participant
from tests.negotiation_helpers import agreement_rows, negotiation, state_object, wait_for
from tests.test_negotiation_protocol import SIGNATURE, _pid, _verification, consumer_side, provider_side

MakeConnector = Callable[..., Participant]


class Stopped(RuntimeError):
    """Stands for the connector stopping at this point."""


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool]) -> list[int]:
    """Make ``connector.negotiations.<name>`` raise the first time ``when(*args)`` holds."""
    real = getattr(negotiations_module, name)
    failed: list[int] = []

    def failing(*args: Any) -> Any:
        if not failed and when(*args):
            failed.append(1)
            raise Stopped(f"stopped in {name}")
        return real(*args)

    monkeypatch.setattr(negotiations_module, name, failing)
    return failed


def test_a_consumer_stopped_while_taking_the_agreement_takes_it_whole_on_the_retry(
    make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = _fail_once(monkeypatch, "_verification", lambda *_: True)
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start()
        wait_for(side.client, negotiation_id, "REQUESTED")
        message = side.agreement_message(consumer_pid)
        with pytest.raises(Stopped):
            side.send(f"/{consumer_pid}/agreement", message)
        assert failed, "the failure was injected"
        found = negotiation(side.client, negotiation_id)
        assert found["state"] == "REQUESTED", "nothing of the agreement step was kept"
        assert agreement_rows(side.transit.core.engine) == []

        # The provider got no answer and sends the agreement again: now it is taken, and verified.
        response = side.send(f"/{consumer_pid}/agreement", message)
        assert response.status_code == 200, response.text
        provider_pid = side.provider_pids[consumer_pid]
        [verification] = side.fake.wait_for(f"/negotiations/{provider_pid}/agreement/verification")
        assert verification.body["@type"] == "ContractAgreementVerificationMessage"
        wait_for(side.client, negotiation_id, "VERIFIED")
        [stored] = agreement_rows(side.transit.core.engine)
        assert stored.id == message["agreement"]["@id"]
        assert stored.provider_signature == message[SIGNATURE]
        assert stored.consumer_signature is not None


def test_a_provider_stopped_while_taking_the_verification_takes_it_whole_on_the_retry(
    make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = _fail_once(monkeypatch, "_event", lambda _row, event: event is Message.FINALIZED)
    with provider_side(make_connector) as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        [hit] = side.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        side.wait_state(provider_pid, "AGREED")
        verification = _verification(side, provider_pid, consumer_pid, hit.body["agreement"])
        path = f"/{provider_pid}/agreement/verification"
        with pytest.raises(Stopped):
            side.send(path, verification)
        assert failed, "the failure was injected"
        state_object(side.state(provider_pid), 200, "AGREED")
        [stored] = agreement_rows(side.city.core.engine)
        assert stored.consumer_signature is None, "nothing of the verification step was kept"

        # The consumer got no answer and verifies again: taken whole, and the provider finalizes.
        response = side.send(path, verification)
        assert response.status_code == 200, response.text
        [finalized] = side.fake.wait_for(f"/negotiations/{consumer_pid}/events")
        assert finalized.body["eventType"] == "FINALIZED"
        side.wait_state(provider_pid, "FINALIZED")
        [stored] = agreement_rows(side.city.core.engine)
        assert stored.consumer_signature == verification[SIGNATURE]
