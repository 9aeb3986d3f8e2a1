"""The operator pages (/ui) in headless Chromium, against real connector processes.

One small data space serves every test (see ``tests.pages_helpers``): city,
whose pages are under test, trusts transit and utility; transit publishes the
datasets city's marketplace finds. Each test has its own browser context, so
its own cookies. Every state is also saved as a screenshot in
``test-artifacts/pages/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, BrowserContext, Page, expect

from connector.app import create_app
from connector.pages.auth import safe_next
from connector.pages.data_address import public_data_address
from connector.pages.session import SESSION_LIFETIME_SECONDS, SessionSigner
from connector.pages.words import dsp_offer_words
from runtime.ratelimit import SharedAttemptLimiter
from tests.conftest import Participant
from tests.pages_helpers import (
    SECRETS,
    SENSOR_COUNT,
    TRANSPORT_THEME,
    Connector,
    DataSpace,
    chromium,
    running_dataspace,
    screenshot,
    sign_in,
)

WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def space(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataSpace]:
    # Asks for the browser first: without Chromium the tests skip before any connector starts.
    with running_dataspace(tmp_path_factory.mktemp("pages")) as running:
        yield running


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def signed_in_page(page: Page, connector: Connector) -> Page:
    page.goto(f"{connector.base_url}/ui/login")
    sign_in(page, connector)
    expect(page).to_have_url(f"{connector.base_url}/ui")
    return page


def assert_accessible(page: Page) -> None:
    """axe-core finds no WCAG 2.2 A/AA violation on the page as it is now."""
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA}})
    violations: list[dict[str, Any]] = results.response["violations"]
    assert not violations, "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
    )
    assert page.locator("html").get_attribute("lang") == "en"


@pytest.mark.slow
def test_unauthenticated_pages_redirect_to_sign_in(space: DataSpace, page: Page) -> None:
    city = space.city
    for path, location in (
        ("/ui", "/ui/login"),
        ("/ui/assets/bus-stops", "/ui/login?next=%2Fui%2Fassets%2Fbus-stops"),
        ("/ui/marketplace?q=bus", "/ui/login?next=%2Fui%2Fmarketplace%3Fq%3Dbus"),
    ):
        response = httpx.get(city.base_url + path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, location), path
    # A forged session cookie is no session.
    forged = httpx.get(
        city.base_url + "/ui", cookies={"tessera_session": "9999999999.x.00"}, follow_redirects=False
    )
    assert forged.status_code == 303

    page.goto(f"{city.base_url}/ui/marketplace")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fmarketplace$"))
    expect(page).to_have_title(f"Sign in — Tessera {city.name}")
    expect(page.get_by_role("navigation")).to_have_count(0)
    screenshot(page, "sign-in")
    assert_accessible(page)
    sign_in(page, city)
    expect(page).to_have_url(f"{city.base_url}/ui/marketplace")  # back where the operator was going


@pytest.mark.slow
def test_sign_in_with_a_wrong_key_shows_the_error(space: DataSpace, page: Page) -> None:
    city = space.city
    page.goto(f"{city.base_url}/ui/login")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/ui/login")) as sent:
        sign_in(page, city, key="not-the-key-" + "x" * 20)
    assert sent.value.status == 401
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Not signed in")
    expect(alert).to_contain_text("not this connector's management API key")
    expect(page.get_by_label("Management API key")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "sign-in-error")
    assert_accessible(page)
    page.goto(f"{city.base_url}/ui")
    expect(page).to_have_url(f"{city.base_url}/ui/login")  # still not signed in


@pytest.mark.slow
def test_sign_in_with_the_key_shows_the_assets_table(
    space: DataSpace, context: BrowserContext, page: Page
) -> None:
    city = space.city
    page.goto(f"{city.base_url}/ui/login")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/ui/login")) as sent:
        sign_in(page, city)
    assert sent.value.status == 303
    cookie = next(c for c in context.cookies() if c["name"] == "tessera_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (
        True,
        "Strict",
        "/ui",
        False,
    )
    expect(page).to_have_url(f"{city.base_url}/ui")
    expect(page).to_have_title(f"Assets and offers — Tessera {city.name}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Assets and offers")
    table = page.get_by_role("table", name=re.compile("Assets of city"))
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Asset", "Title", "Publisher", "Licence", "Personal data", "Offered by", "Created"]
    )
    bus = table.get_by_role("row", name=re.compile("bus-stops"))
    expect(bus.get_by_role("cell")).to_have_text(
        [
            "Bus stop boardings",
            "City of Tessera",
            "CC-BY-4.0",
            "personal data",
            "1 contract definition",
            re.compile("UTC"),
        ]
    )
    parking = table.get_by_role("row", name=re.compile("parking"))
    expect(parking.get_by_role("cell").nth(3)).to_have_text("no")
    expect(page.get_by_role("link", name="Assets and offers")).to_have_attribute("aria-current", "page")
    screenshot(page, "assets")
    assert_accessible(page)


@pytest.mark.slow
def test_asset_detail_shows_metadata_offers_and_who_sees_it(space: DataSpace, page: Page) -> None:
    city = space.city
    signed_in_page(page, city).get_by_role("link", name="bus-stops").click()
    expect(page).to_have_url(f"{city.base_url}/ui/assets/bus-stops")
    expect(page.get_by_role("heading", level=1)).to_have_text("Bus stop boardings")
    metadata = page.get_by_role("region", name="Metadata (DCAT)")
    for text in (
        "Boardings per stop and card",
        "City of Tessera",
        "CC-BY-4.0",
        "yes — personal data",
        "card_id",
    ):
        expect(metadata).to_contain_text(text)

    address = page.get_by_role("region", name="Data address")
    expect(address).to_contain_text("HttpData")
    expect(address).to_contain_text("https://upstream.example/stops")
    expect(address).to_contain_text("/boardings")
    expect(address).to_contain_text("4 more fields are not shown")
    html = page.content()
    for secret in (*SECRETS, "authCode", "Authorization", "access_token"):
        assert secret not in html, f"{secret!r} is on the page"

    offers = page.get_by_role("region", name="Contract definitions that offer it")
    expect(offers).to_contain_text("bus-offer")
    expect(offers).to_contain_text("Permission: use — membership is any of transport-operator")
    expect(offers).to_contain_text("Selects assets where id is any of bus-stops")

    audience = page.get_by_role("table", name=re.compile("Members and whether they see"))
    transit = audience.get_by_role("row", name=re.compile(re.escape(space.transit.did)))
    expect(transit).to_contain_text("transport-operator")
    expect(transit).to_contain_text("Yes, sees it")
    expect(transit).to_contain_text("bus-offer: admitted by permission 1 (use)")
    utility = audience.get_by_role("row", name=re.compile(re.escape(space.utility_did)))
    expect(utility).to_contain_text("No, hidden")
    expect(utility).to_contain_text("membership [] is not in {'transport-operator'}")
    screenshot(page, "asset-detail")
    assert_accessible(page)

    page.goto(f"{city.base_url}/ui/assets/no-such-asset")
    expect(page.get_by_role("alert")).to_contain_text("no asset no-such-asset")


@pytest.mark.slow
def test_sign_out_needs_the_csrf_token(space: DataSpace, context: BrowserContext, page: Page) -> None:
    city = space.city
    signed_in_page(page, city)
    # The same cookies as the page, no CSRF token: refused, and the session goes on.
    refused = context.request.post(f"{city.base_url}/ui/logout", form={}, max_redirects=0)
    assert refused.status == 403
    forged = context.request.post(
        f"{city.base_url}/ui/logout", form={"csrf_token": "0" * 64}, max_redirects=0
    )
    assert forged.status == 403
    # In the browser: the sign-out form without its token.
    page.locator("form.sign-out input[name=csrf_token]").evaluate("input => input.remove()")
    with page.expect_response(lambda r: r.url.endswith("/ui/logout")) as sent:
        page.get_by_role("button", name="Sign out").click()
    assert sent.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Request refused")
    screenshot(page, "sign-out-refused")
    page.goto(f"{city.base_url}/ui")
    expect(page).to_have_url(f"{city.base_url}/ui")  # still signed in

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{city.base_url}/ui/login?signed_out=true")
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    screenshot(page, "signed-out")
    page.goto(f"{city.base_url}/ui")
    expect(page).to_have_url(f"{city.base_url}/ui/login")


@pytest.mark.slow
def test_sign_in_attempts_are_rate_limited(space: DataSpace, page: Page) -> None:
    # On transit, whose pages no other test signs in to: the limit holds for a minute.
    transit = space.transit
    with httpx.Client(base_url=transit.base_url) as client:
        form_page = client.get("/ui/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', form_page.text)
        assert match is not None
        statuses = [
            client.post("/ui/login", data={"csrf_token": match.group(1), "api_key": f"wrong-{n}"}).status_code
            for n in range(11)
        ]
        assert statuses == [401] * 10 + [429]
        limited = client.post("/ui/login", data={"csrf_token": match.group(1), "api_key": transit.api_key})
        assert limited.status_code == 429  # even the right key, until the minute is over
        assert 0 < int(limited.headers["retry-after"]) <= 60
    page.goto(f"{transit.base_url}/ui/login")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/ui/login")) as sent:
        sign_in(page, transit)
    assert sent.value.status == 429
    expect(page.get_by_role("alert")).to_contain_text("Too many sign-in attempts")
    screenshot(page, "sign-in-rate-limited")


def _focused(page: Page) -> dict[str, str]:
    focused: dict[str, str] = page.evaluate(
        """() => {
            const element = document.activeElement;
            const style = getComputedStyle(element);
            return {
                text: (element.innerText || element.getAttribute('aria-label') || element.id || '').trim(),
                tag: element.tagName.toLowerCase(),
                outlineStyle: style.outlineStyle,
                outlineWidth: style.outlineWidth,
                top: String(element.getBoundingClientRect().top),
            };
        }"""
    )
    return focused


def _assert_visible_focus(focused: dict[str, str]) -> None:
    assert focused["outlineStyle"] != "none", focused
    assert float(focused["outlineWidth"].removesuffix("px")) >= 2, focused


@pytest.mark.slow
def test_keyboard_only(space: DataSpace, page: Page) -> None:
    city = space.city
    page.goto(f"{city.base_url}/ui/login")
    page.keyboard.press("Tab")
    assert _focused(page)["text"] == "Skip to main content"
    page.keyboard.press("Tab")
    assert _focused(page)["text"] == "api-key"
    page.keyboard.type(city.api_key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{city.base_url}/ui")

    page.keyboard.press("Tab")
    skip = _focused(page)
    assert skip["text"] == "Skip to main content"
    _assert_visible_focus(skip)
    assert float(skip["top"]) >= 0  # shown on screen while it has focus
    screenshot(page, "keyboard-skip-link")
    navigation = (
        "Assets and offers",
        "Marketplace",
        "Negotiations",
        "Agreements",
        "Transfers",
        "Transfer log",
        "Sign out",
    )
    for expected in navigation:
        page.keyboard.press("Tab")
        focused = _focused(page)
        assert focused["text"] == expected, focused
        _assert_visible_focus(focused)
        if expected == "Marketplace":
            screenshot(page, "keyboard-navigation")

    # The skip link moves focus to the main content; the next Tab reaches its first control.
    for _ in range(len(navigation)):
        page.keyboard.press("Shift+Tab")
    assert _focused(page)["text"] == "Skip to main content"
    page.keyboard.press("Enter")
    assert _focused(page)["tag"] == "main"
    page.keyboard.press("Tab")  # the table's scrollable region
    page.keyboard.press("Tab")
    focused = _focused(page)
    assert focused["text"] == "parking", focused  # the newest asset comes first
    _assert_visible_focus(focused)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{city.base_url}/ui/assets/parking")


@pytest.mark.slow
def test_marketplace_finds_crawled_datasets(space: DataSpace, page: Page) -> None:
    city, transit = space.city, space.transit
    with city.management() as client:
        crawl = client.post("/management/v3/federatedcatalog/crawl")
    assert crawl.status_code == 200, crawl.text
    by_member = {result["participantId"]: result for result in crawl.json()}
    assert by_member[transit.did]["status"] == "ok", by_member
    assert by_member[transit.did]["datasetCount"] == SENSOR_COUNT + 2  # not the dataset hidden from city

    signed_in_page(page, city).get_by_role("link", name="Marketplace").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Marketplace")
    expect(page.get_by_role("status")).to_have_text(f"Datasets 1 to 20 of {SENSOR_COUNT + 2}.")
    screenshot(page, "marketplace")
    assert_accessible(page)
    page.get_by_role("link", name="Next page").click()
    expect(page).to_have_url(f"{city.base_url}/ui/marketplace?page=2")
    expect(page.get_by_role("status")).to_have_text(
        f"Datasets 21 to {SENSOR_COUNT + 2} of {SENSOR_COUNT + 2}."
    )
    expect(page.get_by_role("link", name="Previous page")).to_be_visible()

    page.get_by_label("Words in title, description or keywords").fill("ridership")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/ui/marketplace\?q=ridership&"))
    results = page.get_by_role("table", name=re.compile("Datasets found"))
    expect(results.get_by_role("row")).to_have_count(2)  # the header and one dataset
    row = results.get_by_role("row", name=re.compile("Ridership by stop"))
    expect(row).to_contain_text(transit.did)
    expect(row).to_contain_text("Tessera Transit")
    row.get_by_role("link", name="Search theme TRAN").click()  # every transit dataset has that theme
    expect(page.get_by_label("Theme", exact=True)).to_have_value(TRANSPORT_THEME)
    expect(page.get_by_role("status")).to_have_text(f"Datasets 1 to 20 of {SENSOR_COUNT + 2}.")

    page.get_by_label("Theme", exact=True).fill("")
    page.get_by_label("Personal data only").check()
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_have_text("Datasets 1 to 1 of 1.")
    expect(results.get_by_role("row", name=re.compile("Card trips"))).to_contain_text("personal data")
    screenshot(page, "marketplace-search")

    page.get_by_label("Personal data only").uncheck()
    page.get_by_label("Words in title, description or keywords").fill("depot")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_have_text("No dataset matches.")  # transit hides it from city

    page.get_by_label("Words in title, description or keywords").fill("ridership")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Ridership by stop").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Ridership by stop")
    expect(page).to_have_title(f"Dataset Ridership by stop — Tessera {city.name}")
    metadata = page.get_by_role("region", name="Metadata")
    expect(metadata).to_contain_text("Ridership by stop, published by the transit operator.")
    expect(metadata).to_contain_text("https://creativecommons.org/licenses/by/4.0/")
    expect(metadata).to_contain_text("HttpData-PULL")
    offers = page.get_by_role("region", name="Offers")
    expect(offers.get_by_role("heading", level=3)).to_have_count(1)
    expect(offers).to_contain_text("Permission: use — no conditions")
    screenshot(page, "marketplace-dataset")
    assert_accessible(page)

    page.goto(f"{city.base_url}/ui/marketplace/{quote(transit.did, safe='')}/depot-internal")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")


# --- the pieces, without a browser ---


def test_a_session_ends_when_it_expires_or_the_api_key_changes() -> None:
    now = [1_000_000.0]
    signer = SessionSigner("k" * 32, clock=lambda: now[0])
    token = signer.issue()
    assert signer.is_valid(token)
    assert not SessionSigner("other-key-" + "k" * 22, clock=lambda: now[0]).is_valid(token)
    expires, nonce, signature = token.split(".")
    assert not signer.is_valid(f"{int(expires) + 3600}.{nonce}.{signature}")  # a longer life is forged
    assert not signer.is_valid(f"{expires}.{nonce}.{'0' * len(signature)}")
    assert not signer.is_valid(None)
    assert not signer.is_valid("")
    now[0] += SESSION_LIFETIME_SECONDS - 1
    assert signer.is_valid(token)
    now[0] += 1
    assert not signer.is_valid(token)


def test_csrf_tokens_belong_to_one_session() -> None:
    signer = SessionSigner("k" * 32)
    first, second = signer.issue(), signer.issue()
    assert signer.csrf_matches(first, signer.csrf_for(first))
    assert not signer.csrf_matches(first, signer.csrf_for(second))
    assert not signer.csrf_matches(first, None)
    assert not signer.csrf_matches(first, "")


def test_the_rate_limit_is_per_address_and_slides(make_connector: Callable[..., Participant]) -> None:
    engine = make_connector("city").core.engine
    now = [1_000.0]
    limiter = SharedAttemptLimiter("operator-pages", 3, 60, clock=lambda: now[0])
    assert [limiter.attempt(engine, "a") for _ in range(3)] == [None, None, None]
    assert limiter.attempt(engine, "a") == 60
    assert limiter.attempt(engine, "b") is None
    now[0] = 1_059.5
    assert limiter.attempt(engine, "a") == 0.5
    now[0] = 1_060
    assert limiter.attempt(engine, "a") is None


def test_data_addresses_lose_their_secrets() -> None:
    edc = "https://w3id.org/edc/v0.0.1/ns/"
    shown = public_data_address(
        {
            "@type": [edc + "DataAddress"],
            edc + "type": [{"@value": "HttpData"}],
            edc + "baseUrl": [{"@value": "https://me:pw@host.example:8443/api?api_key=abc#x"}],
            edc + "path": [{"@value": "/rows?token=abc"}],
            edc + "proxyPath": [{"@value": "true"}],
            edc + "authKey": [{"@value": "X-Api-Key"}],
            edc + "secretName": [{"@value": "vault-entry"}],
            "header:X-Custom": [{"@value": "abc"}],
            edc + "clientPassword": [{"@value": "abc"}],
            edc + "oauth2:tokenUrl": [{"@value": "https://idp.example/token"}],
        }
    )
    assert shown.type == "HttpData"
    assert shown.fields == (
        ("baseUrl", "https://host.example:8443/api"),
        ("path", "/rows"),
        ("proxyPath", "true"),
    )
    assert shown.hidden == 5


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/marketplace?q=bus", "/ui/marketplace?q=bus"),
        ("/ui", "/ui"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/\\evil.example", "/ui"),
        ("/management/v3/assets", "/ui"),
        ("/uix", "/ui"),
        (None, "/ui"),
    ],
)
def test_after_sign_in_only_these_pages_are_a_destination(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_policies_in_words() -> None:
    offer = {
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {
                        "leftOperand": "https://w3id.org/tessera/v1/ns/membership",
                        "operator": "isAnyOf",
                        "rightOperand": ["a", "b"],
                    },
                    {"or": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}]},
                ],
            }
        ],
        "prohibition": [{"action": "distribute"}],
    }
    assert dsp_offer_words(offer) == [
        "Permission: use — membership is any of a, b and any of (purpose is research)",
        "Prohibition: distribute — no conditions",
    ]
    assert dsp_offer_words({}) == ["No rules: every member, any use."]


def test_the_session_cookie_is_secure_behind_https(make_connector: Callable[..., Participant]) -> None:
    city = make_connector("city")
    city.settings.public_url = "https://city.example.org"
    assert city.settings.management_api_key is not None
    with TestClient(create_app(city.core), base_url="https://city.example.org") as client:
        form = client.get("/ui/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert match is not None
        signed_in = client.post(
            "/ui/login",
            data={
                "csrf_token": match.group(1),
                "api_key": city.settings.management_api_key.get_secret_value(),
            },
            follow_redirects=False,
        )
    assert signed_in.status_code == 303
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("tessera_session="))
    assert {"HttpOnly", "Secure", "Path=/ui", "SameSite=strict"} <= {
        part.strip() for part in cookie.split(";")
    }
