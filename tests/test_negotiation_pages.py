"""The negotiation and agreement pages (/ui/negotiations, /ui/agreements) in headless Chromium.

Two real connectors (``tests.negotiation_pages_helpers``): transit provides,
city consumes. Each operator has a browser context of their own, signed in
once. The consumer starts negotiations through the Management API, as its
software would; every step after that is taken on the pages. Every state is
saved as a screenshot in ``test-artifacts/pages/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlmodel import Session

from connector.negotiations import INITIAL, Pending
from connector.pages.negotiations_view import (
    NegotiationFilter,
    available_actions,
    negotiation_page,
    notes_of,
    party_label,
)
from contracts.evidence import verify_bundle
from contracts.models import NegotiationRow
from contracts.negotiation import Message
from tests.conftest import Participant
from tests.negotiation_pages_helpers import (
    Pair,
    api_state,
    assert_accessible,
    assert_visible_focus,
    focused,
    running_pair,
    shows_state,
    start_negotiation,
    wait_api,
)
from tests.pages_helpers import Connector, chromium, screenshot, sign_in


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def pair(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # Asks for the browser first: without Chromium the tests skip before any connector starts.
    with running_pair(tmp_path_factory.mktemp("negotiation-pages")) as running:
        yield running


def _signed_in(browser: Browser, connector: Connector) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{connector.base_url}/ui/login")
    sign_in(page, connector)
    expect(page).to_have_url(f"{connector.base_url}/ui")
    page.close()
    return context


@pytest.fixture(scope="module")
def provider(browser: Browser, pair: Pair) -> Iterator[BrowserContext]:
    """Transit's operator, signed in."""
    context = _signed_in(browser, pair.provider)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def consumer(browser: Browser, pair: Pair) -> Iterator[BrowserContext]:
    """City's operator, signed in."""
    context = _signed_in(browser, pair.consumer)
    try:
        yield context
    finally:
        context.close()


def _url(connector: Connector, negotiation_id: str) -> str:
    return f"{connector.base_url}/ui/negotiations/{negotiation_id}"


def _check_agreement(page: Page, connector: Connector, name: str) -> None:
    """The agreement's page: signed by both, both signatures verify, the evidence downloads and verifies."""
    page.get_by_role("link", name=re.compile(r"^Agreement urn:uuid:")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Agreement for card-trips")
    expect(page.get_by_role("main")).to_contain_text("signed by provider and consumer")
    expect(page.get_by_role("region", name="Terms")).to_contain_text("Permission: use — no conditions")
    signatures = page.get_by_role("table", name="Signatures of the agreement and whether they verify")
    for party in ("Provider", "Consumer"):
        row = signatures.get_by_role("row", name=re.compile(f"^{party}"))
        expect(row).to_contain_text("yes, signature present")
        expect(row).to_contain_text("Verifies")
        expect(row).not_to_contain_text("Does not verify")
    expect(signatures).to_contain_text("Verifies with this connector's own key.")
    expect(signatures).to_contain_text("Verifies with the key pinned for it in the trust list.")
    screenshot(page, f"agreement-{name}")
    assert_accessible(page)

    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile(r"^Download evidence")).click()
    assert re.fullmatch(r"agreement-urn-uuid-[0-9a-f-]+\.json", download.value.suggested_filename)
    bundle = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    report = verify_bundle(bundle, require_both=True)
    assert report.ok, report.problems
    assert bundle["agreement"]["target"] == "card-trips"
    evidence = page.request.get(page.url + "/evidence")
    assert evidence.headers["content-disposition"].startswith('attachment; filename="agreement-urn-uuid-')
    assert evidence.headers["content-type"] == "application/json"

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agreements").click()
    table = page.get_by_role("table", name=re.compile(f"Agreements of {connector.name}"))
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Agreement", "Dataset", "Provider", "Consumer", "Signed", "Signatures"]
    )
    row = table.get_by_role("row", name=re.compile("card-trips"))
    expect(row).to_contain_text("signed by provider and consumer")
    screenshot(page, f"agreements-{name}")
    assert_accessible(page)


@pytest.mark.slow
def test_the_provider_approves_and_finalizes_a_manual_negotiation(
    pair: Pair, provider: BrowserContext, consumer: BrowserContext
) -> None:
    transit, city = pair.provider, pair.consumer
    consumer_id, provider_id = start_negotiation(pair, "card-trips", approval="manual")
    wait_api(transit, provider_id, "REQUESTED")
    city_label, transit_label = Pair.label(city), Pair.label(transit)

    page = provider.new_page()
    page.goto(f"{transit.base_url}/ui")
    page.get_by_role("link", name="Negotiations", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Negotiations")
    expect(page.get_by_role("link", name="Negotiations", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    table = page.get_by_role("table", name=re.compile("Negotiations of transit"))
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Dataset", "Counter-party", "Our role", "State", "Approval", "Last change", "Reason or progress"]
    )
    row = table.get_by_role("row", name=re.compile("card-trips"))
    expect(row.get_by_role("cell")).to_have_text(
        [
            city.did,
            "provider",
            re.compile("^REQUESTED.*the consumer has asked for the offer"),
            "manual",
            re.compile("UTC$"),
            "—",
        ]
    )
    screenshot(page, "negotiations-provider")
    assert_accessible(page)

    # The filter is a plain GET form.
    page.get_by_label("Our role").select_option("consumer")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{transit.base_url}/ui/negotiations?state=&role=consumer")
    expect(page.get_by_role("status")).to_have_text("No negotiation matches.")
    page.get_by_label("State").select_option("REQUESTED")
    page.get_by_label("Our role").select_option("provider")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{transit.base_url}/ui/negotiations?state=REQUESTED&role=provider")
    expect(page.get_by_label("State")).to_have_value("REQUESTED")
    expect(page.get_by_role("status")).to_have_text("Negotiations 1 to 1 of 1.")
    screenshot(page, "negotiations-filtered")

    page.get_by_role("link", name=f"card-trips with {city_label}, REQUESTED").click()
    url = _url(transit, provider_id)
    expect(page).to_have_url(url)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Negotiation for card-trips with {city_label}")
    summary = page.get_by_role("region", name="Summary")
    expect(summary).to_contain_text("REQUESTED — the consumer has asked for the offer")
    expect(summary).to_contain_text("manual — each step waits for an operator")
    expect(summary).to_contain_text("card-trips-offer")
    expect(page.get_by_role("region", name="Terms")).to_contain_text("Permission: use — no conditions")
    expect(page.get_by_role("region", name="What happened")).to_contain_text(
        f"Started: {city_label} asked for card-trips (REQUESTED)."
    )
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        f"Waiting for you: approve the request from {city_label} for card-trips."
    )
    # Exactly the steps a provider may take in REQUESTED: agree or terminate.
    expect(page.locator("form.action button")).to_have_text(
        [
            f"Approve the request from {city_label} for card-trips",
            f"Terminate the negotiation with {city_label} for card-trips",
        ]
    )
    screenshot(page, "negotiation-requested")
    assert_accessible(page)

    page.get_by_role("button", name=f"Approve the request from {city_label} for card-trips").click()
    expect(page).to_have_url(f"{url}?done=agree")
    expect(page.get_by_role("status")).to_have_text(
        f"Approved: the signed agreement is being sent to {city_label}."
    )
    screenshot(page, "negotiation-approved")
    shows_state(page, url, "AGREED")
    expect(page.locator("form.action button")).to_have_text(
        [f"Terminate the negotiation with {city_label} for card-trips"]
    )
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        f"Waiting for the consumer, {city_label}, to verify (counter-sign) the agreement."
    )

    # The consumer asked for manual approval too: its operator verifies on its own pages.
    consumer_page = consumer.new_page()
    consumer_url = _url(city, consumer_id)
    shows_state(consumer_page, consumer_url, "AGREED")
    expect(consumer_page.get_by_role("region", name="Summary")).to_contain_text(
        "consumer (we asked for the data)"
    )
    screenshot(consumer_page, "negotiation-agreed-consumer")
    assert_accessible(consumer_page)
    consumer_page.get_by_role(
        "button", name=f"Verify the agreement with {transit_label} for card-trips"
    ).click()
    expect(consumer_page.get_by_role("status")).to_have_text(
        f"Verified: your counter-signature is being sent to {transit_label}."
    )

    shows_state(page, url, "VERIFIED")
    screenshot(page, "negotiation-verified")
    page.get_by_role("button", name=f"Finalize the agreement with {city_label} for card-trips").click()
    expect(page.get_by_role("status")).to_have_text(
        f"Finalized: {city_label} is being told that the agreement is in force."
    )
    shows_state(page, url, "FINALIZED")
    expect(page.locator("form.action")).to_have_count(0)
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        "Nothing more happens: the agreement is in force."
    )
    screenshot(page, "negotiation-finalized-provider")
    shows_state(consumer_page, consumer_url, "FINALIZED")
    screenshot(consumer_page, "negotiation-finalized-consumer")
    assert_accessible(consumer_page)

    _check_agreement(page, transit, "provider")
    _check_agreement(consumer_page, city, "consumer")
    assert (
        api_state(city, consumer_id)["contractAgreementId"]
        == api_state(transit, provider_id)["contractAgreementId"]
    )


@pytest.mark.slow
def test_a_negotiation_refused_by_the_contract_policy_shows_why(
    pair: Pair, provider: BrowserContext, consumer: BrowserContext
) -> None:
    transit, city = pair.provider, pair.consumer
    consumer_id, provider_id = start_negotiation(pair, "depot-plans")
    wait_api(transit, provider_id, "TERMINATED")
    wait_api(city, consumer_id, "TERMINATED")

    page = provider.new_page()
    page.goto(f"{transit.base_url}/ui/negotiations?state=TERMINATED")
    row = page.get_by_role("row", name=re.compile("depot-plans"))
    expect(row).to_contain_text("TERMINATED")
    expect(row).to_contain_text("automatic")
    expect(row).to_contain_text("Reason:")
    expect(row).to_contain_text("public-authority")
    screenshot(page, "negotiations-refused")
    row.get_by_role("link").click()
    why = page.get_by_role("region", name="Why it was terminated")
    expect(why).to_contain_text("public-authority")
    expect(page.locator("form.action")).to_have_count(0)
    expect(page.get_by_role("region", name="What happens next")).to_contain_text(
        "Nothing more happens: the negotiation ended without an agreement."
    )
    screenshot(page, "negotiation-refused-provider")
    assert_accessible(page)

    consumer_page = consumer.new_page()
    consumer_page.goto(_url(city, consumer_id))
    why = consumer_page.get_by_role("region", name="Why it was terminated")
    expect(why).to_contain_text("terminated by the counter-party: the contract policy does not admit you")
    expect(why).to_contain_text("public-authority")
    screenshot(consumer_page, "negotiation-refused-consumer")


@pytest.mark.slow
def test_a_refused_step_and_a_terminate_with_a_reason(
    pair: Pair, provider: BrowserContext, consumer: BrowserContext
) -> None:
    transit, city = pair.provider, pair.consumer
    city_label = Pair.label(city)
    consumer_id, provider_id = start_negotiation(pair, "fare-data")
    wait_api(transit, provider_id, "REQUESTED")
    url = _url(transit, provider_id)

    page = provider.new_page()
    page.goto(url)
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        page.get_by_role("button", name=f"Approve the request from {city_label} for fare-data").click()
    assert sent.value.status == 409
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Not done.")
    expect(alert).to_contain_text(f"the contract policy does not admit {city.did}")
    expect(alert).to_contain_text("public-authority")
    expect(page.get_by_role("region", name="Summary")).to_contain_text("REQUESTED")
    screenshot(page, "negotiation-step-refused")
    assert_accessible(page)
    assert api_state(transit, provider_id)["state"] == "REQUESTED"

    # A reason is required: the browser insists (required), and so does the server.
    token = page.locator("form.action input[name=csrf_token]").first.get_attribute("value")
    assert token
    blank = provider.request.post(
        f"{url}/terminate", form={"csrf_token": token, "reason": "  "}, max_redirects=0
    )
    assert blank.status == 400
    assert "Give a reason" in blank.text()
    assert api_state(transit, provider_id)["state"] == "REQUESTED"

    reason = "Fare data is for public authorities only; ask the city's transport office."
    page.get_by_label(f"Reason for terminating (sent to {city_label})").fill(reason)
    page.get_by_role("button", name=f"Terminate the negotiation with {city_label} for fare-data").click()
    expect(page.get_by_role("status")).to_have_text(f"Terminated: {city_label} is being told the reason.")
    shows_state(page, url, "TERMINATED")
    expect(page.get_by_role("region", name="Why it was terminated")).to_have_text(
        re.compile(re.escape(reason))
    )
    screenshot(page, "negotiation-terminated-provider")

    consumer_page = consumer.new_page()
    shows_state(consumer_page, _url(city, consumer_id), "TERMINATED")
    expect(consumer_page.get_by_role("region", name="Why it was terminated")).to_contain_text(
        f"terminated by the counter-party: {reason}"
    )
    screenshot(consumer_page, "negotiation-terminated-consumer")
    assert_accessible(consumer_page)
    consumer_page.goto(f"{city.base_url}/ui/negotiations?role=consumer&state=TERMINATED")
    expect(consumer_page.get_by_role("row", name=re.compile("fare-data"))).to_contain_text(
        f"Reason: terminated by the counter-party: {reason}"
    )
    screenshot(consumer_page, "negotiations-consumer")


@pytest.mark.slow
def test_steps_without_the_csrf_token_are_refused_and_the_buttons_work_by_keyboard(
    pair: Pair, provider: BrowserContext
) -> None:
    transit, city = pair.provider, pair.consumer
    city_label = Pair.label(city)
    _, provider_id = start_negotiation(pair, "card-trips")
    wait_api(transit, provider_id, "REQUESTED")
    url = _url(transit, provider_id)

    # The operator's own cookies, but no token or a wrong one: 403, and nothing changes.
    forms: list[dict[str, str | float | bool]] = [
        {},
        {"csrf_token": "0" * 64},
        {"csrf_token": "0" * 64, "reason": "no"},
    ]
    for form in forms:
        action = "terminate" if "reason" in form else "agree"
        refused = provider.request.post(f"{url}/{action}", form=form, max_redirects=0)
        assert refused.status == 403, form
        assert "Request refused" in refused.text()
    # Without a session: to the sign-in page, which comes back to the page.
    for path in ("/ui/negotiations?state=REQUESTED", f"/ui/negotiations/{provider_id}", "/ui/agreements"):
        anonymous_get = httpx.get(transit.base_url + path, follow_redirects=False)
        assert anonymous_get.status_code == 303, path
        assert anonymous_get.headers["location"].startswith("/ui/login?next=%2Fui%2F"), path
    anonymous = httpx.post(f"{url}/agree", data={"csrf_token": "x"}, follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == f"/ui/login?next=%2Fui%2Fnegotiations%2F{provider_id}"
    page = provider.new_page()
    page.goto(url)
    page.locator("form.action input[name=csrf_token]").first.evaluate("input => input.remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        page.get_by_role("button", name=f"Approve the request from {city_label} for card-trips").click()
    assert sent.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Request refused")
    screenshot(page, "negotiation-csrf-refused")
    found = api_state(transit, provider_id)
    assert found["state"] == "REQUESTED"
    assert "pendingMessage" not in found

    # Keyboard only: Tab reaches every control, each with a visible outline, up to the buttons.
    page.goto(url)
    approve = f"Approve the request from {city_label} for card-trips"
    terminate = f"Terminate the negotiation with {city_label} for card-trips"
    stops = []
    for _ in range(30):
        page.keyboard.press("Tab")
        now = focused(page)
        assert_visible_focus(now)
        stops.append(now["text"])
        if now["text"] == approve:
            break
    assert stops[0] == "Skip to main content", stops
    assert approve in stops, stops
    screenshot(page, "keyboard-negotiation-approve")
    page.keyboard.press("Tab")
    on_reason = focused(page)
    assert on_reason["tag"] == "textarea", on_reason
    assert_visible_focus(on_reason)
    page.keyboard.press("Tab")
    on_terminate = focused(page)
    assert on_terminate["text"] == terminate, on_terminate
    assert_visible_focus(on_terminate)
    screenshot(page, "keyboard-negotiation-terminate")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert focused(page)["text"] == approve
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text(
        f"Approved: the signed agreement is being sent to {city_label}."
    )


# --- the pieces, without a browser ---


def _row(
    number: int,
    state: str,
    role: str = "provider",
    *,
    approval: str = "manual",
    pending_message: str | None = None,
    error_detail: str | None = None,
) -> NegotiationRow:
    return NegotiationRow(
        id=f"negotiation-{number:02}",
        role=role,
        provider_pid=f"urn:uuid:p{number}",
        consumer_pid=f"urn:uuid:c{number}",
        counter_party_did="did:web:transit.example:dsp",
        counter_party_address="https://transit.example/dsp",
        state=state,
        asset_id="card-trips",
        offer=json.dumps({"@id": "offer-1", "permission": [{"action": "use"}]}),
        approval=approval,
        error_detail=error_detail,
        pending_message=pending_message,
        created_at=1_000 + number,
        updated_at=2_000 + number,
    )


def _actions(row: NegotiationRow) -> list[str]:
    return [action.action for action in available_actions(row)]


def test_the_buttons_are_the_steps_this_side_may_take_now() -> None:
    assert _actions(_row(1, "REQUESTED")) == ["agree", "terminate"]
    assert _actions(_row(1, "REQUESTED", "consumer")) == ["terminate"]
    assert _actions(_row(1, "OFFERED", "consumer")) == ["accept", "terminate"]
    assert _actions(_row(1, "OFFERED")) == ["terminate"]  # a counter-offer is not made on these pages
    assert _actions(_row(1, "ACCEPTED")) == ["agree", "terminate"]
    assert _actions(_row(1, "AGREED", "consumer")) == ["verify", "terminate"]
    assert _actions(_row(1, "AGREED")) == ["terminate"]
    assert _actions(_row(1, "VERIFIED")) == ["finalize", "terminate"]
    assert _actions(_row(1, "FINALIZED")) == []
    assert _actions(_row(1, "TERMINATED", "consumer")) == []
    assert _actions(_row(1, INITIAL, "consumer")) == ["terminate"]  # withdrawn locally
    pending = Pending(Message.AGREEMENT, "https://transit.example/dsp/x", {}).to_json()
    assert _actions(_row(1, "REQUESTED", pending_message=pending)) == []  # the connector would refuse
    labels = [a.label for a in available_actions(_row(1, "VERIFIED"))]
    assert labels == [
        "Finalize the agreement with transit.example/dsp for card-trips",
        "Terminate the negotiation with transit.example/dsp for card-trips",
    ]
    assert party_label("did:web:127.0.0.1%3A8001") == "127.0.0.1:8001"
    assert party_label("did:key:z6Mk") == "did:key:z6Mk"


def test_the_list_pages_filters_and_puts_the_newest_first(make_connector: Callable[..., Participant]) -> None:
    city = make_connector("city")
    with Session(city.core.engine) as session:
        for number in range(1, 26):
            state = "TERMINATED" if number % 5 == 0 else "REQUESTED"
            session.add(_row(number, state, "consumer" if number % 2 else "provider", error_detail="why"))
        session.commit()
        first = negotiation_page(session, NegotiationFilter())
        assert (first.total, first.first, first.last) == (25, 1, 20)
        assert [r.id for r in first.rows][:2] == ["negotiation-25", "negotiation-24"]
        assert first.previous_url is None
        assert first.next_url == "/ui/negotiations?page=2"
        second = negotiation_page(session, NegotiationFilter.from_query({"page": "2"}))
        assert [r.id for r in second.rows] == [f"negotiation-{n:02}" for n in range(5, 0, -1)]
        assert second.next_url is None
        assert second.previous_url == "/ui/negotiations"
        ended = negotiation_page(
            session, NegotiationFilter.from_query({"state": "TERMINATED", "role": "consumer"})
        )
        assert [r.id for r in ended.rows] == ["negotiation-25", "negotiation-15", "negotiation-05"]
        assert ended.rows[0].notes == ("Reason: why",)
    odd = NegotiationFilter.from_query({"state": "<script>", "role": "admin", "page": "-3"})
    assert odd == NegotiationFilter()
    retried = _row(1, "AGREED", error_detail="retrying ContractAgreementMessage: HTTP 503")
    assert notes_of(retried) == ()  # delivered since: no longer news
    retried.pending_message = Pending(Message.VERIFICATION, "https://transit.example/x", {}).to_json()
    retried.attempts = 1
    assert notes_of(retried) == (
        "delivering ContractAgreementVerificationMessage, attempt 2",
        "retrying ContractAgreementMessage: HTTP 503",
    )
