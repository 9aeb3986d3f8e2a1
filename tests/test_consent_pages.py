"""The citizen self-service pages in headless Chromium, against a real consent service process.

The service (``tessera serve``) has citizens alice and bob (made with ``tessera
consent citizen add``), transit's card-trips agreement (recipients: the city
and the utility) and the city's parking agreement, and signs citizens in
through the test OpenID Connect provider as well (another process). Every
state is saved as a screenshot in ``test-artifacts/pages/consent-*.png``, and
every page is scanned with axe-core for WCAG 2.2 A/AA violations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, expect

from consent.receipts import verify_receipt
from tests.conftest import free_port
from tests.consent_pages_helpers import (
    ConsentService,
    Provider,
    create_consent_service,
    oidc_provider,
    public_jwk_of_service,
)
from tests.helpers import serving
from tests.pages_helpers import chromium, screenshot

WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
CITY_SWITCH = "Share with City of Tessera for traffic planning"
UTILITY_SWITCH = "Share with Tessera Utility for traffic planning"
PARKING_SWITCH = "Share with Tessera Transit for parking planning"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def running(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ConsentService, Provider]]:
    # Asks for the browser first: without Chromium the tests skip before anything starts.
    consent_port, provider_port = free_port(), free_port()
    callback = f"http://127.0.0.1:{consent_port}/citizen/oidc/callback"
    with oidc_provider(callback, port=provider_port) as provider:
        service = create_consent_service(
            tmp_path_factory.mktemp("consent-pages"),
            oidc_issuer=provider.base_url,
            port=consent_port,
            more_citizens=("carol", "dave"),
            transfers_for=("alice", "carol"),
        )
        with serving(service.data_dir, service.port):
            yield service, provider


@pytest.fixture
def service(running: tuple[ConsentService, Provider]) -> ConsentService:
    return running[0]


@pytest.fixture(params=[True, False], ids=["with-script", "without-script"])
def javascript(request: pytest.FixtureRequest) -> bool:
    """Whether the page's script (the progressive enhancement) loads; the page must work either way."""
    enabled: bool = request.param
    return enabled


@pytest.fixture
def context(browser: Browser, javascript: bool) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    if not javascript:
        # The page's own script never arrives (as in a browser without JavaScript). JavaScript itself
        # stays on for Playwright and axe-core, which run their checks through it.
        made.route("**/citizen/static/consent.js", lambda route: route.abort())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def shot(page: Page, javascript: bool, name: str) -> None:
    """A screenshot of this state, named for the mode (``-no-js`` when JavaScript is off)."""
    screenshot(page, name if javascript else f"{name}-no-js")


def assert_accessible(page: Page) -> None:
    """axe-core finds no WCAG 2.2 A/AA violation on the page as it is now."""
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA}})
    violations: list[dict[str, Any]] = results.response["violations"]
    assert not violations, "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
    )
    assert page.locator("html").get_attribute("lang") == "en"


def sign_in(page: Page, service: ConsentService, name: str) -> None:
    page.goto(f"{service.base_url}/citizen/sign-in")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(service.passwords[name])
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(f"{service.base_url}/citizen")


def assert_switch(page: Page, name: str, on: bool) -> None:
    switch = page.get_by_role("switch", name=name, exact=True)
    expect(switch).to_have_attribute("aria-checked", "true" if on else "false")
    expect(switch).to_have_text("On" if on else "Off")  # the state in words, not by colour alone


def download(page: Page, link_name: str, tmp_path: Path) -> Path:
    with page.expect_download() as started:
        page.get_by_role("link", name=link_name).click()
    target = tmp_path / started.value.suggested_filename
    started.value.save_as(target)
    return target


@pytest.mark.slow
def test_sign_in_page_and_a_wrong_password(service: ConsentService, page: Page, javascript: bool) -> None:
    page.goto(f"{service.base_url}/citizen")
    expect(page).to_have_url(f"{service.base_url}/citizen/sign-in")
    expect(page).to_have_title("Sign in — Your data sharing choices")
    expect(page.get_by_role("navigation")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign in with the test provider")).to_be_visible()
    shot(page, javascript, "consent-sign-in")
    assert_accessible(page)

    page.get_by_label("Name").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/citizen/sign-in")
    ) as sent:
        page.get_by_role("button", name="Sign in", exact=True).click()
    assert sent.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("That name and password do not match an account.")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    shot(page, javascript, "consent-sign-in-error")
    assert_accessible(page)


@pytest.mark.slow
def test_choices_receipts_history_transfers_export_and_withdraw_everything(
    service: ConsentService, page: Page, tmp_path: Path, javascript: bool
) -> None:
    citizen = "alice" if javascript else "carol"
    sign_in(page, service, citizen)
    expect(page.get_by_role("heading", level=1)).to_have_text("Your choices")
    expect(page.get_by_role("heading", level=2, name="Tessera Transit")).to_be_visible()
    expect(page.get_by_role("heading", level=2, name="City of Tessera")).to_be_visible()
    expect(page.get_by_text("Transit shares the trips of your card with the city")).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text="location, travel history")).to_have_count(1)
    for name in (CITY_SWITCH, UTILITY_SWITCH, PARKING_SWITCH):
        assert_switch(page, name, on=False)  # off until the citizen turns it on
    expect(page.locator("#confirmation")).to_be_empty()  # the live region, empty until something changes
    status = page.get_by_role("status")
    shot(page, javascript, "consent-choices-all-off")
    assert_accessible(page)

    # Turn one on: confirmed in the live region, the switch says On, the others stay off. With
    # JavaScript the page stays (the region's text changes, which is what screen readers announce).
    page.evaluate("window.stayed = true")
    page.get_by_role("switch", name=CITY_SWITCH).click()
    expect(page).to_have_url(re.compile(r"/citizen\?saved=\d+#choice-2$"))
    expect(status).to_contain_text("Saved: City of Tessera may now receive your data for traffic planning.")
    expect(status).to_have_attribute("aria-live", "polite")
    assert_switch(page, CITY_SWITCH, on=True)
    assert_switch(page, UTILITY_SWITCH, on=False)
    expect(page.get_by_text("You said yes on")).to_be_visible()
    expect(page).to_have_title("Saved — Your choices — Your data sharing choices")
    if javascript:
        assert page.evaluate("window.stayed") is True, "the page was loaded again"
        assert _focused(page)["name"] == CITY_SWITCH  # focus stays on the switch
    else:
        assert page.evaluate("window.stayed") is None, "without the script the form is posted"
    shot(page, javascript, "consent-choice-on")
    assert_accessible(page)

    # The receipt: a JWS signed with the key the service's DID document publishes.
    receipt = download(page, "Download the receipt of this change", tmp_path)
    claims = verify_receipt(receipt.read_text(), public_jwk_of_service(service.base_url))
    assert claims["piiPrincipalId"] == service.citizen_ids[citizen]
    assert claims["consentRecord"]["state"] == "ConsentGiven"
    purpose = claims["services"][0]["purposes"][0]
    assert (purpose["thirdPartyName"], purpose["purposeCategory"]) == (
        "City of Tessera",
        ["traffic-planning"],
    )

    # Turning it off again withdraws, with its own receipt.
    page.get_by_role("switch", name=CITY_SWITCH).click()
    expect(status).to_contain_text(
        "Saved: City of Tessera may no longer receive your data for traffic planning."
    )
    assert_switch(page, CITY_SWITCH, on=False)
    withdrawal = download(page, "Download the receipt of this change", tmp_path)
    withdrawn_claims = verify_receipt(withdrawal.read_text(), public_jwk_of_service(service.base_url))
    assert withdrawn_claims["consentRecord"]["state"] == "ConsentWithdrawn"
    shot(page, javascript, "consent-choice-withdrawn")
    page.get_by_role("switch", name=CITY_SWITCH).click()
    expect(status).to_contain_text("may now receive")
    page.get_by_role("switch", name=PARKING_SWITCH).click()
    expect(status).to_contain_text("Saved: Tessera Transit may now receive your data for parking planning.")

    # History: newest first, every decision with its receipt.
    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("History")
    rows = page.get_by_role("row")
    expect(rows).to_have_count(5)  # a header and four decisions
    expect(rows.nth(1)).to_contain_text("You said yes")
    expect(rows.nth(1)).to_contain_text("Tessera Transit")
    expect(rows.nth(3)).to_contain_text("You withdrew your yes")
    expect(page.get_by_role("link", name=re.compile(r"^Download the receipt of "))).to_have_count(4)
    shot(page, javascript, "consent-history")
    assert_accessible(page)

    # Who received the data: transit's report of the city's pull.
    page.get_by_role("link", name="Who received your data").click()
    transfer = page.get_by_role("row").nth(1)
    expect(transfer).to_contain_text("Tessera Transit")
    expect(transfer).to_contain_text("City of Tessera")
    expect(transfer).to_contain_text("card-trips")
    expect(transfer).to_contain_text("42")
    shot(page, javascript, "consent-transfers")
    assert_accessible(page)

    # Export: everything as JSON.
    exported = json.loads(download(page, "Download all as JSON", tmp_path).read_text())
    assert exported["citizen"] == service.citizen_ids[citizen]
    assert exported["account"]["name"] == citizen
    assert [entry["state"] for entry in exported["history"]] == [
        "ConsentGiven",
        "ConsentWithdrawn",
        "RenewedConsentGiven",
        "ConsentGiven",
    ]
    assert all(entry["receipt"].count(".") == 2 for entry in exported["history"])
    assert [t["record_count"] for t in exported["transfers"]] == [42]
    assert sorted((c["recipient_name"], c["on"]) for c in exported["consents"]) == [
        ("City of Tessera", True),
        ("Tessera Transit", True),
        ("Tessera Utility", False),
    ]

    # Withdraw everything: one action, after a confirmation.
    page.get_by_role("link", name="Your choices").click()
    page.get_by_role("link", name="Withdraw everything…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Withdraw everything")
    expect(
        page.get_by_role("listitem").filter(has_text="with City of Tessera for traffic planning")
    ).to_have_count(1)
    expect(
        page.get_by_role("listitem").filter(has_text="with Tessera Transit for parking planning")
    ).to_have_count(1)
    shot(page, javascript, "consent-withdraw-everything-confirm")
    assert_accessible(page)
    page.get_by_role("link", name="No, keep my choices").click()
    assert_switch(page, CITY_SWITCH, on=True)  # nothing changed
    page.get_by_role("link", name="Withdraw everything…").click()
    page.get_by_role("button", name="Yes, withdraw everything").click()
    expect(page).to_have_url(f"{service.base_url}/citizen?withdrawn=2")
    expect(page.get_by_role("status")).to_have_text(
        "Withdrawn: all 2 of your yes answers are now off. Receipts are in your history."
    )
    for name in (CITY_SWITCH, UTILITY_SWITCH, PARKING_SWITCH):
        assert_switch(page, name, on=False)
    shot(page, javascript, "consent-everything-withdrawn")
    assert_accessible(page)


def _focused(page: Page) -> dict[str, str]:
    focused: dict[str, str] = page.evaluate(
        """() => {
            const element = document.activeElement;
            const style = getComputedStyle(element);
            const labelledBy = element.getAttribute('aria-labelledby');
            const label = labelledBy ? document.getElementById(labelledBy).innerText : '';
            const rect = element.getBoundingClientRect();
            return {
                name: (label || element.innerText || element.getAttribute('aria-label') || element.id || '')
                    .replace(/\\s+/g, ' ').trim(),
                tag: element.tagName.toLowerCase(),
                role: element.getAttribute('role') || '',
                checked: element.getAttribute('aria-checked') || '',
                outlineStyle: style.outlineStyle,
                outlineWidth: style.outlineWidth,
                width: String(rect.width),
                height: String(rect.height),
            };
        }"""
    )
    return focused


def _assert_visible_focus(focused: dict[str, str]) -> None:
    assert focused["outlineStyle"] != "none", focused
    assert float(focused["outlineWidth"].removesuffix("px")) >= 2, focused


def tab_to(page: Page, name: str, *, key: str = "Tab", limit: int = 40) -> dict[str, str]:
    """Press Tab (or Shift+Tab) until the control called ``name`` has focus; each stop shows its focus."""
    for _ in range(limit):
        page.keyboard.press(key)
        focused = _focused(page)
        assert focused["tag"] != "body", f"focus left the page while looking for {name!r}"
        if focused["tag"] != "main":
            _assert_visible_focus(focused)
        if focused["name"] == name:
            return focused
    raise AssertionError(f"{name!r} never got focus with {key}")


@pytest.mark.slow
def test_keyboard_only(service: ConsentService, page: Page, tmp_path: Path, javascript: bool) -> None:
    citizen = "bob" if javascript else "dave"
    page.goto(f"{service.base_url}/citizen/sign-in")
    page.keyboard.press("Tab")
    assert _focused(page)["name"] == "Skip to main content"
    page.keyboard.press("Tab")
    assert _focused(page)["name"] == "name"
    page.keyboard.type(citizen)
    page.keyboard.press("Tab")
    assert _focused(page)["name"] == "password"
    page.keyboard.type(service.passwords[citizen])
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{service.base_url}/citizen")

    page.keyboard.press("Tab")
    skip = _focused(page)
    assert skip["name"] == "Skip to main content"
    _assert_visible_focus(skip)
    for expected in ("Your choices", "History", "Who received your data", "Download all as JSON"):
        page.keyboard.press("Tab")
        focused = _focused(page)
        assert focused["name"] == expected, focused
        _assert_visible_focus(focused)
    tab_to(page, f"Sign out {citizen}")
    tab_to(page, "Skip to main content", key="Shift+Tab")
    page.keyboard.press("Enter")
    assert _focused(page)["tag"] == "main"

    # The first control of the main content is the first switch (the city's parking): Space turns it on.
    page.keyboard.press("Tab")
    switch = _focused(page)
    assert (switch["name"], switch["role"], switch["checked"]) == (PARKING_SWITCH, "switch", "false")
    _assert_visible_focus(switch)
    assert float(switch["height"]) >= 24  # WCAG 2.2 target size (minimum)
    assert float(switch["width"]) >= 24
    shot(page, javascript, "consent-keyboard-switch-focused")
    page.keyboard.press("Space")
    expect(page.get_by_role("status")).to_contain_text("Saved: Tessera Transit may now receive")
    # Focus carries on from the switch just used: with JavaScript it never left; without, the page
    # comes back at that switch, so the next Tab lands on it.
    if not javascript:
        # The answer's fragment names the switch; the browser makes it the start of the next Tab only
        # once it has scrolled there, which can be after the status text shows (seen once under load).
        page.wait_for_load_state("load")
        page.keyboard.press("Tab")
    again = _focused(page)
    assert (again["name"], again["checked"]) == (PARKING_SWITCH, "true"), again
    page.keyboard.press("Tab")
    second = _focused(page)
    assert (second["name"], second["checked"]) == (CITY_SWITCH, "false")
    page.keyboard.press("Enter")  # Enter works as well as Space
    expect(page.get_by_role("status")).to_contain_text("Saved: City of Tessera may now receive")
    assert_switch(page, CITY_SWITCH, on=True)
    shot(page, javascript, "consent-keyboard-switch-on")

    # The receipt link of the confirmation, reached by keyboard.
    tab_to(page, "Download the receipt of this change", key="Shift+Tab")
    with page.expect_download() as started:
        page.keyboard.press("Enter")
    receipt_path = tmp_path / "receipt.jws"
    started.value.save_as(receipt_path)
    claims = verify_receipt(receipt_path.read_text(), public_jwk_of_service(service.base_url))
    assert claims["services"][0]["purposes"][0]["thirdPartyName"] == "City of Tessera"

    # Withdraw everything, by keyboard.
    tab_to(page, "Withdraw everything…")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Withdraw everything")
    tab_to(page, "Yes, withdraw everything")
    shot(page, javascript, "consent-keyboard-withdraw-confirm")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text(
        "Withdrawn: all 2 of your yes answers are now off. Receipts are in your history."
    )
    assert_switch(page, CITY_SWITCH, on=False)
    assert_switch(page, PARKING_SWITCH, on=False)

    # History and sign-out, by keyboard.
    tab_to(page, "History", key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("row")).to_have_count(5)
    tab_to(page, f"Sign out {citizen}")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{service.base_url}/citizen/sign-in?signed_out=true")
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    shot(page, javascript, "consent-signed-out")


@pytest.mark.slow
def test_sign_in_through_the_oidc_provider(
    running: tuple[ConsentService, Provider], page: Page, javascript: bool
) -> None:
    service, provider = running
    page.goto(f"{service.base_url}/citizen/sign-in")
    page.get_by_role("button", name="Sign in with the test provider").click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(provider.base_url)}/authorize\?"))
    page.get_by_label("Subject").fill("city-id-1234")
    shot(page, javascript, "consent-oidc-provider")
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(f"{service.base_url}/citizen")
    expect(page.get_by_text("Hello, Test citizen city-id-1234.")).to_be_visible()
    assert_switch(page, CITY_SWITCH, on=False)  # a new citizen: everything off
    shot(page, javascript, "consent-oidc-signed-in")
    assert_accessible(page)
