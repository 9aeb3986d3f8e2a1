"""The transfer pages (/ui/transfers) in headless Chromium, between two real connector processes.

city provides files, transit consumes (``tests.transfer_helpers.transfer_pair``):
transit agrees and asks for transfers through the Management API, as its
software would; every operator's step after that is taken on the pages. Each
operator has a browser context of their own, signed in once. Every state is
saved as a screenshot in ``test-artifacts/pages/``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from connector.pages.transfers_view import TransferFilter, available_actions, size_text
from connector.transfer_models import TransferRow
from connector.transfer_states import Message
from connector.transfers import INITIAL, Pending
from tests.negotiation_helpers import Node
from tests.negotiation_pages_helpers import assert_accessible, assert_visible_focus, focused
from tests.pages_helpers import Connector, chromium, screenshot, sign_in
from tests.transfer_helpers import TransferPair, transfer, transfer_pair, wait_state, wait_until

CSV = b"station,hour,bicycles\n" + b"".join(f"S{i % 7},{i},{i * 13 % 240}\n".encode() for i in range(3000))
WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def pair(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    # Asks for the browser first: without Chromium the tests skip before any connector starts.
    with transfer_pair(tmp_path_factory.mktemp("transfer-pages"), "sqlite") as made:
        yield made


def _connector(node: Node) -> Connector:
    return Connector(
        node.name, node.base_url, node.did, (node.data_dir / "management-api-key").read_text().strip()
    )


def _signed_in(browser: Browser, node: Node) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{node.base_url}/ui/login")
    sign_in(page, _connector(node))
    expect(page).to_have_url(f"{node.base_url}/ui")
    page.close()
    return context


@pytest.fixture(scope="module")
def provider(browser: Browser, pair: TransferPair) -> Iterator[BrowserContext]:
    """city's operator, signed in."""
    context = _signed_in(browser, pair.city)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def consumer(browser: Browser, pair: TransferPair) -> Iterator[BrowserContext]:
    """transit's operator, signed in."""
    context = _signed_in(browser, pair.transit)
    try:
        yield context
    finally:
        context.close()


def _label(node: Node) -> str:
    return node.base_url.removeprefix("http://")


def _url(node: Node, transfer_id: str) -> str:
    return f"{node.base_url}/ui/transfers/{transfer_id}"


def shows_state(page: Page, url: str, state: str) -> None:
    """Reload the transfer's page (it has no script) until its summary says ``state``, delivered."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page.goto(url)
        shown = page.locator("#summary-heading + dl .state").first.text_content()
        delivering = page.get_by_text("This connector is delivering").count()
        if shown == state and not delivering:
            return
        assert time.monotonic() < deadline, f"{url} stayed {shown}, wanted {state}"
        page.wait_for_timeout(200)


def _pull(pair: TransferPair, consumer_id: str) -> httpx.Response:
    endpoint, token, _ = pair.edr(consumer_id)
    return httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.mark.slow
def test_a_manual_transfer_is_started_suspended_resumed_and_terminated_on_the_pages(
    pair: TransferPair, provider: BrowserContext, consumer: BrowserContext
) -> None:
    city, transit = pair.city, pair.transit
    pair.publish_file("bike-counts", CSV, transfer_approval="manual")
    agreement_id = pair.agree("bike-counts")
    consumer_id = pair.request(agreement_id)
    provider_id = pair.provider_side(consumer_id)["@id"]
    wait_state(pair.capi, provider_id, "REQUESTED")
    transit_label, city_label = _label(transit), _label(city)
    what = f"the transfer of bike-counts with {transit_label}"

    page = provider.new_page()
    page.goto(f"{city.base_url}/ui")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Transfers").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Transfers")
    expect(page.get_by_role("link", name="Transfers", exact=True)).to_have_attribute("aria-current", "page")
    table = page.get_by_role("table", name=re.compile("Transfers of city"))
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Dataset", "Counter-party", "Our role", "Type", "State", "Bytes", "Accesses", "Requested",
         "Last change", "Reason or progress"]
    )  # fmt: skip
    row = table.get_by_role("row", name=re.compile("bike-counts"))
    expect(row.get_by_role("cell")).to_have_text(
        [transit.did, "provider", "pull", re.compile("^REQUESTED"), "0 bytes", "0",
         re.compile("UTC$"), re.compile("UTC$"), "—"]
    )  # fmt: skip
    screenshot(page, "transfers-provider-requested")
    assert_accessible(page)

    page.get_by_role("link", name=f"bike-counts with {transit_label}, REQUESTED").click()
    url = _url(city, provider_id)
    expect(page).to_have_url(url)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Transfer of bike-counts with {transit_label}")
    summary = page.get_by_role("region", name="Summary")
    expect(summary).to_contain_text("manual — the provider's operator starts each transfer")
    expect(summary).to_contain_text("HttpData-PULL")
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        "Waiting for you: the contract definition asks for manual approval"
    )
    expect(page.locator("form.action button")).to_have_text([f"Start {what}", f"Terminate {what}"])
    screenshot(page, "transfer-requested")
    assert_accessible(page)

    page.get_by_role("button", name=f"Start {what}").click()
    expect(page).to_have_url(f"{url}?done=start")
    expect(page.get_by_role("status")).to_have_text(
        f"Started: {transit_label} is being sent the start message."
    )
    shows_state(page, url, "STARTED")
    wait_state(pair.tapi, consumer_id, "STARTED")

    # transit pulls with the token it was sent: the provider's page counts the bytes and the access.
    pulled = _pull(pair, consumer_id)
    assert pulled.status_code == 200
    assert pulled.content == CSV
    page.goto(f"{city.base_url}/ui/transfers?role=provider&state=STARTED")
    row = page.get_by_role("row", name=re.compile("bike-counts"))
    expect(row).to_contain_text(size_text(len(CSV)))
    expect(page.get_by_role("row", name=re.compile("bike-counts")).get_by_role("cell").nth(5)).to_have_text(
        "1"
    )
    screenshot(page, "transfers-provider-started")

    page.goto(url)
    expect(page.get_by_role("region", name="Summary")).to_contain_text(f"{len(CSV):,} bytes")
    expect(page.locator("form.action button")).to_have_text([f"Suspend {what}", f"Terminate {what}"])
    page.get_by_role("button", name=f"Suspend {what}").click()
    expect(page.get_by_role("status")).to_have_text(f"Suspended: {transit_label} is being told.")
    shows_state(page, url, "SUSPENDED")
    assert _pull(pair, consumer_id).status_code == 403  # a suspended transfer serves nothing
    expect(page.locator("form.action button")).to_have_text([f"Resume {what}", f"Terminate {what}"])
    screenshot(page, "transfer-suspended-provider")
    assert_accessible(page)

    # The consumer's operator sees it suspended, and why, on its own pages; it resumes it.
    consumer_page = consumer.new_page()
    consumer_url = _url(transit, consumer_id)
    shows_state(consumer_page, consumer_url, "SUSPENDED")
    expect(consumer_page.get_by_role("region", name="Summary")).to_contain_text(
        "consumer (we receive the data)"
    )
    expect(consumer_page.get_by_role("region", name="Last error or reason")).to_contain_text(
        "suspended by the counter-party"
    )
    screenshot(consumer_page, "transfer-suspended-consumer")
    assert_accessible(consumer_page)
    consumer_what = f"the transfer of bike-counts with {city_label}"
    consumer_page.get_by_role("button", name=f"Resume {consumer_what}").click()
    expect(consumer_page.get_by_role("status")).to_have_text(
        f"Resumed: {city_label} is being sent the start message."
    )
    shows_state(consumer_page, consumer_url, "STARTED")
    shows_state(page, url, "STARTED")
    assert _pull(pair, consumer_id).status_code == 200

    reason = "Maintenance of the counting stations; ask again next week."
    page.get_by_label(f"Reason for terminating (sent to {transit_label}; optional)").fill(reason)
    page.get_by_role("button", name=f"Terminate {what}").click()
    expect(page.get_by_role("status")).to_have_text(f"Terminated: {transit_label} is being told the reason.")
    shows_state(page, url, "TERMINATED")
    expect(page.locator("form.action")).to_have_count(0)
    expect(page.get_by_role("region", name="Why it was terminated")).to_contain_text(reason)
    screenshot(page, "transfer-terminated-provider")
    shows_state(consumer_page, consumer_url, "TERMINATED")
    expect(consumer_page.get_by_role("region", name="Why it was terminated")).to_contain_text(
        f"terminated by the counter-party: {reason}"
    )
    assert _pull(pair, consumer_id).status_code == 403
    consumer_page.goto(f"{transit.base_url}/ui/transfers?state=TERMINATED")
    expect(consumer_page.get_by_role("row", name=re.compile("bike-counts"))).to_contain_text(
        f"Reason: terminated by the counter-party: {reason}"
    )
    screenshot(consumer_page, "transfers-consumer-terminated")
    assert_accessible(consumer_page)


@pytest.mark.slow
def test_a_pushed_file_is_listed_for_the_consumers_operator(
    pair: TransferPair, consumer: BrowserContext
) -> None:
    transit = pair.transit
    pair.publish_file("meter-summary", CSV)
    agreement_id = pair.agree("meter-summary")
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)
    wait_state(pair.tapi, consumer_id, "COMPLETED")

    page = consumer.new_page()
    page.goto(f"{transit.base_url}/ui/transfers")
    row = page.get_by_role("table", name=re.compile("Transfers of transit")).get_by_role(
        "row", name=re.compile("meter-summary")
    )
    expect(row).to_contain_text("push")
    expect(row).to_contain_text("COMPLETED")
    expect(row.get_by_role("cell").nth(4)).to_have_text("— (counted by the provider)")  # bytes: not ours
    files = page.get_by_role("table", name="Files received by transit")
    expect(files.get_by_role("row", name=re.compile("meter-summary"))).to_contain_text(
        hashlib.sha256(CSV).hexdigest()
    )
    expect(files).to_contain_text(str(transit.data_dir / "sink" / "meter-summary"))
    screenshot(page, "transfers-received-files")
    assert_accessible(page)
    with page.expect_download() as download:
        files.get_by_role("link", name=re.compile("^meter-summary")).click()
    assert Path(download.value.path()).read_bytes() == CSV

    page.goto(_url(transit, consumer_id))
    pushed = page.get_by_role("region", name="Pushed file")
    expect(pushed).to_contain_text(f"Arrived whole: {transit.data_dir / 'sink' / 'meter-summary'}")
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        "Nothing more happens: the transfer is complete."
    )
    screenshot(page, "transfer-push-completed-consumer")
    assert_accessible(page)

    # The download is for a signed-in operator only, and only of a file that arrived.
    assert (
        httpx.get(f"{transit.base_url}/ui/transfers/received/{'0' * 32}", follow_redirects=False).status_code
        == 303
    )
    missing = page.request.get(f"{transit.base_url}/ui/transfers/received/{'0' * 32}")
    assert missing.status == 404


@pytest.mark.slow
def test_steps_without_the_csrf_token_are_refused_and_the_buttons_work_by_keyboard(
    pair: TransferPair, provider: BrowserContext
) -> None:
    city, transit = pair.city, pair.transit
    pair.publish_file("parking", CSV, transfer_approval="manual")
    agreement_id = pair.agree("parking")
    consumer_id = pair.request(agreement_id)
    provider_id = pair.provider_side(consumer_id)["@id"]
    wait_state(pair.capi, provider_id, "REQUESTED")
    url = _url(city, provider_id)
    what = f"the transfer of parking with {_label(transit)}"

    forms: list[dict[str, str | float | bool]] = [{}, {"csrf_token": "0" * 64}]
    for form in forms:
        refused = provider.request.post(f"{url}/start", form=form, max_redirects=0)
        assert refused.status == 403, form
        assert "Request refused" in refused.text()
    anonymous = httpx.post(f"{url}/start", data={"csrf_token": "x"}, follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == f"/ui/login?next=%2Fui%2Ftransfers%2F{provider_id}"
    assert httpx.get(f"{city.base_url}/ui/transfers", follow_redirects=False).status_code == 303
    unknown = provider.request.get(f"{city.base_url}/ui/transfers/no-such-transfer")
    assert unknown.status == 404
    assert transfer(pair.capi, provider_id)["state"] == "REQUESTED"

    page = provider.new_page()
    page.goto(url)
    token = page.locator("form.action input[name=csrf_token]").first.get_attribute("value")
    assert token
    # A step the state machine refuses: the connector's reason, and nothing changes.
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        page.evaluate(
            """token => {
                const form = document.createElement('form');
                form.method = 'post';
                form.action = location.pathname + '/resume';
                form.innerHTML = `<input name="csrf_token" value="${token}">`;
                document.body.append(form);
                form.submit();
            }""",
            token,
        )
    assert sent.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text("only a SUSPENDED transfer resumes")
    screenshot(page, "transfer-step-refused")
    assert_accessible(page)
    assert transfer(pair.capi, provider_id)["state"] == "REQUESTED"

    # Keyboard only: Tab reaches every control, each with a visible outline, up to the start button.
    page.goto(url)
    start, terminate = f"Start {what}", f"Terminate {what}"
    stops = []
    for _ in range(40):
        page.keyboard.press("Tab")
        now = focused(page)
        assert_visible_focus(now)
        stops.append(now["text"])
        if now["text"] == start:
            break
    assert stops[0] == "Skip to main content", stops
    assert start in stops, stops
    page.keyboard.press("Tab")
    assert focused(page)["tag"] == "textarea"
    page.keyboard.press("Tab")
    on_terminate = focused(page)
    assert on_terminate["text"] == terminate, on_terminate
    assert_visible_focus(on_terminate)
    screenshot(page, "keyboard-transfer-terminate")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert focused(page)["text"] == start
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text(
        f"Started: {_label(transit)} is being sent the start message."
    )
    wait_state(pair.tapi, consumer_id, "STARTED")
    wait_until(lambda: _pull(pair, consumer_id).status_code == 200, WAIT_SECONDS, "the pull to work")


@pytest.mark.slow
def test_a_transfer_from_a_live_source_is_shown_as_live(pair: TransferPair, provider: BrowserContext) -> None:
    city, transit = pair.city, pair.transit
    topic = f"tessera/test/pages/{time.monotonic_ns()}"
    address = {"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": topic}
    pair.publish_file("traffic-live", b"", address=address)
    agreement_id = pair.agree("traffic-live")
    consumer_id = pair.request(agreement_id)
    provider_id = pair.provider_side(consumer_id)["@id"]
    pair.both(consumer_id, provider_id, "STARTED")

    page = provider.new_page()
    page.goto(f"{city.base_url}/ui/transfers?state=STARTED")
    row = page.get_by_role("row", name=re.compile("traffic-live"))
    expect(row.get_by_role("cell").nth(2)).to_have_text("live")
    page.goto(_url(city, provider_id))
    expect(page.get_by_role("region", name="Summary")).to_contain_text(
        "live — messages stream to the consumer until the transfer stops"
    )
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        "Live: each access streams messages until the transfer is suspended, completed or terminated."
    )
    screenshot(page, "transfer-live-provider")
    assert_accessible(page)
    page.get_by_role("button", name=f"Suspend the transfer of traffic-live with {_label(transit)}").click()
    shows_state(page, _url(city, provider_id), "SUSPENDED")


# --- the pieces, without a browser ---


def _row(
    state: str, role: str = "provider", *, approval: str = "manual", pending: bool = False
) -> TransferRow:
    return TransferRow(
        id="transfer-1",
        role=role,
        provider_pid="urn:uuid:p1",
        consumer_pid="urn:uuid:c1",
        counter_party_did="did:web:transit.example",
        counter_party_address="https://transit.example/dsp",
        state=state,
        agreement_id="agreement-1",
        asset_id="bike-counts",
        transfer_type="HttpData-PULL",
        approval=approval,
        pending_message=Pending(Message.START, "https://transit.example/x", {}).to_json()
        if pending
        else None,
        created_at=1,
        updated_at=2,
    )


def _actions(row: TransferRow) -> list[str]:
    return [action.action for action in available_actions(row)]


def test_the_buttons_are_the_steps_this_side_may_take_now() -> None:
    assert _actions(_row("REQUESTED")) == ["start", "terminate"]
    assert _actions(_row("REQUESTED", "consumer")) == ["terminate"]
    assert _actions(_row("STARTED")) == ["suspend", "terminate"]
    assert _actions(_row("STARTED", "consumer")) == ["suspend", "terminate"]
    assert _actions(_row("SUSPENDED", "consumer")) == ["resume", "terminate"]
    assert _actions(_row("COMPLETED")) == []
    assert _actions(_row("TERMINATED", "consumer")) == []
    assert _actions(_row(INITIAL, "consumer")) == ["terminate"]  # withdrawn locally
    assert _actions(_row("REQUESTED", pending=True)) == []  # the connector would refuse every step
    assert size_text(999) == "999 bytes"
    assert size_text(1) == "1 byte"
    assert size_text(1_234_567) == "1,234,567 bytes (1.2 MB)"
    assert TransferFilter.from_query({"state": "<b>", "role": "admin", "page": "-2"}) == TransferFilter()
    assert (
        TransferFilter.from_query({"state": "STARTED", "page": "3"}).url(2)
        == "/ui/transfers?state=STARTED&page=2"
    )
