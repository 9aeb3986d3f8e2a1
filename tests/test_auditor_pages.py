"""The audit pages (/ui/audit) in headless Chromium, against real connector processes.

City (provider) holds a real agreement with transit (negotiated over DSP, signed by both)
and transfer entries appended through the translog API, some on earlier days. An auditor
made with ``tessera auditor add`` signs in; the page's own script checks every entry's
inclusion proof and the checkpoint's signature in the browser. Tampering with city's
database (an entry, a proof node, the checkpoint) must turn the check to FAILED. Every
state is saved as a screenshot in ``test-artifacts/pages/``.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from fastapi.routing import APIRoute
from playwright.sync_api import Browser, BrowserContext, Page, expect
from starlette.routing import BaseRoute

from connector.app import create_app
from connector.auditor.auth import AUDITOR_COOKIE
from connector.settings import load_connector_settings
from connector.translog.entries import REFUSAL
from runtime.service import ServiceCore
from tests.auditor_helpers import (
    AUDITOR,
    AUDITOR_PASSWORD,
    AuditedPair,
    append_at,
    audited_pair,
    auditor_client,
    tessera,
)
from tests.helpers import REPO, cli_env
from tests.pages_helpers import chromium, screenshot

WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
DOWNLOADS = REPO / "test-artifacts" / "pages"
ENTRIES = 10  # 2 + 1 + 2 appended, 1 agreement, 2 + 2 appended


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def pair(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedPair]:
    # Asks for the browser first: without Chromium the tests skip before any connector starts.
    with audited_pair(tmp_path_factory.mktemp("audit")) as made:
        yield made


@pytest.fixture(scope="module")
def session(pair: AuditedPair) -> str:
    """One auditor session for the tests that are not about signing in (sign-in is rate-limited)."""
    with auditor_client(pair.city.base_url) as client:
        token: str = client.cookies[AUDITOR_COOKIE]
    return token


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def assert_accessible(page: Page) -> None:
    """axe-core finds no WCAG 2.2 A/AA violation on the page as it is now."""
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA}})
    violations: list[dict[str, Any]] = results.response["violations"]
    assert not violations, "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
    )


def sign_in(page: Page, pair: AuditedPair, password: str = AUDITOR_PASSWORD, name: str = AUDITOR) -> None:
    page.goto(f"{pair.city.base_url}/ui/audit/login")
    page.get_by_label("Auditor name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_audit(page: Page, pair: AuditedPair, session: str) -> None:
    """The timeline, in a browser holding the auditor's session cookie."""
    page.context.add_cookies(
        [{"name": AUDITOR_COOKIE, "value": session, "url": f"{pair.city.base_url}/ui/audit"}]
    )
    page.goto(f"{pair.city.base_url}/ui/audit")


def checked(page: Page) -> Page:
    """The page once its script has checked every entry (up to 30 s on a loaded machine)."""
    page.wait_for_selector("body[data-verification='done']", state="attached", timeout=30_000)
    return page


def status_of(page: Page, index: int) -> str:
    return page.locator(f"li.entry[data-index='{index}'] [data-proof-status]").inner_text()


def all_statuses(page: Page) -> dict[int, str]:
    found = {}
    for item in page.locator("li.entry").all():
        found[int(item.get_attribute("data-index") or "-1")] = item.locator(
            "[data-proof-status]"
        ).inner_text()
    return found


def leaf_index(pair: AuditedPair, fragment: str) -> int:
    rows = pair.sql("SELECT idx FROM transfer_log_leaf WHERE entry LIKE ? ORDER BY idx", f"%{fragment}%")
    assert len(rows) == 1, rows
    return int(rows[0][0])


# ---------------------------------------------------------------- signing in


@pytest.mark.slow
def test_sign_in_needs_an_auditor_password_not_the_api_key(pair: AuditedPair, page: Page) -> None:
    city = pair.city
    page.goto(f"{city.base_url}/ui/audit?kind=transfers")
    expect(page).to_have_url(re.compile(r"/ui/audit/login\?next=%2Fui%2Faudit%3Fkind%3Dtransfers$"))
    expect(page).to_have_title(f"Auditor sign-in — Tessera audit {city.name}")
    screenshot(page, "audit-sign-in")
    assert_accessible(page)

    api_key = (city.data_dir / "management-api-key").read_text().strip()
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/ui/audit/login")
    ) as sent:
        sign_in(page, pair, password=api_key)
    assert sent.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("not an auditor account")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "audit-sign-in-error")
    assert_accessible(page)

    sign_in(page, pair)
    expect(page).to_have_url(f"{city.base_url}/ui/audit")
    cookie = next(c for c in page.context.cookies() if c["name"] == AUDITOR_COOKIE)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui/audit")
    expect(page.get_by_text(f"Auditor {AUDITOR} (read only)")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{city.base_url}/ui/audit/login?signed_out=true")
    page.goto(f"{city.base_url}/ui/audit")
    expect(page).to_have_url(f"{city.base_url}/ui/audit/login")


# ---------------------------------------------------------------- the timeline and its proofs


@pytest.mark.slow
def test_every_entry_is_verified_in_the_page(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    checked(page)
    expect(page.locator("#checkpoint-signature")).to_have_text("verified: signed by this connector's key")
    # transit witnessed city's log: its cosignature is checked with the key city pins for transit.
    cosignature = page.locator(f"[data-witness='{pair.transit.did}'] [data-cosignature-status]")
    expect(cosignature).to_have_text(re.compile(r"^verified: cosigned 20\d\d-\d\d-\d\dT"))
    statuses = all_statuses(page)
    assert len(statuses) == ENTRIES, statuses
    assert set(statuses.values()) == {"verified"}, statuses
    expect(page.locator("#verification-summary")).to_have_text(
        f"All {ENTRIES} entries on this page verified against the signed checkpoint."
    )
    # The browser computed each leaf hash itself: it matches the one the log stored.
    index = leaf_index(pair, '"agreement.finalized"')
    stored = pair.sql("SELECT leaf_hash FROM transfer_log_leaf WHERE idx = ?", index)[0][0]
    item = page.locator(f"li.entry[data-index='{index}']")
    item.get_by_text("Entry and inclusion proof").click()
    expect(item.locator("[data-leaf-hash]")).to_have_text(bytes(stored).hex())
    expect(item.get_by_role("heading")).to_have_text(f"Entry {index}: Agreement finalized personal data")
    screenshot(page, "audit-timeline")
    assert_accessible(page)


@pytest.mark.slow
def test_the_chart_counts_transfers_and_bytes_per_day(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    checked(page)
    today = datetime.now(UTC).date()
    transfers = page.locator("svg#chart-transfers")
    expect(transfers).to_have_attribute("role", "img")
    expect(transfers.locator("rect.bar")).to_have_count(3)  # three days had completed transfers
    expect(page.locator("#chart-transfers-desc")).to_contain_text("4 completed transfers")
    expect(page.locator("#chart-bytes-desc")).to_contain_text("54.0 kB transferred")
    page.get_by_text("The figures as a table").click()
    table = page.get_by_role("table", name="Completed transfers and bytes per day")
    expect(table.get_by_role("row", name=f"{today} 2 12000")).to_be_visible()
    expect(table.get_by_role("row", name=f"{today - timedelta(days=1)} 1 30000")).to_be_visible()
    expect(table.get_by_role("row", name=f"{today - timedelta(days=3)} 1 12000")).to_be_visible()
    expect(table.get_by_role("row", name=f"{today - timedelta(days=2)} 0 0")).to_be_visible()
    screenshot(page, "audit-chart")
    assert_accessible(page)


@pytest.mark.slow
def test_filters_narrow_the_timeline(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    checked(page)
    page.get_by_label("Personal data only").check()
    page.get_by_role("button", name="Apply filters").click()
    checked(page)
    expect(page).to_have_url(re.compile(r"personal=yes"))
    headings = page.locator("li.entry h3").all_inner_texts()
    # card-trips is personal: its agreement, its four transfer entries and the refused request for it;
    # nothing of parking.
    assert len(headings) == 6, headings
    assert all("personal data" in h for h in headings), headings
    assert set(all_statuses(page).values()) == {"verified"}

    page.goto(f"{pair.city.base_url}/ui/audit")
    page.get_by_label("Dataset").select_option("parking")
    page.get_by_label("Kind of entry").select_option("transfers")
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    page.get_by_label("From (UTC day)").first.fill(yesterday)
    page.get_by_label("To (UTC day, included)").first.fill(yesterday)
    page.get_by_role("button", name="Apply filters").click()
    checked(page)
    facts = page.locator("li.entry").all_inner_texts()
    assert len(facts) == 2, facts  # transfer 2: started and completed
    assert all("parking" in f for f in facts), facts
    expect(page.locator("#chart-transfers-desc")).to_contain_text(
        f"1 completed transfer from {yesterday} to {yesterday}"
    )
    screenshot(page, "audit-filtered")
    assert_accessible(page)

    page.goto(f"{pair.city.base_url}/ui/audit")
    page.get_by_label("Counter-party").select_option("did:web:utility.example")
    page.get_by_role("button", name="Apply filters").click()
    checked(page)
    expect(page.locator("li.entry h3")).to_have_text([re.compile(r"Entry \d+: Refusal")])
    expect(page.locator("li.entry")).to_contain_text("membership 'transport-operator' is required")

    response = page.goto(f"{pair.city.base_url}/ui/audit?from=21-11-2026&kind=nonsense")
    assert response is not None
    assert response.status == 400
    expect(page.get_by_role("alert")).to_contain_text("is not a date like 2026-11-21")
    expect(page.get_by_role("alert")).to_contain_text("There is no kind of entry 'nonsense'")


@pytest.mark.slow
def test_the_agreement_shows_both_signatures_verified(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    page.goto(f"{pair.city.base_url}/ui/audit?kind=agreements")
    checked(page)
    page.get_by_role("link", name=re.compile("View the agreement and both signatures")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Agreement for card-trips")
    rows = page.get_by_role("table", name="Signatures of the agreement and whether they verify").locator(
        "tbody tr"
    )
    expect(rows).to_have_count(2)
    for row in rows.all():
        expect(row).to_contain_text("Verifies")
    screenshot(page, "audit-agreement")
    assert_accessible(page)
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Download evidence")).click()
    evidence = DOWNLOADS / "audit-agreement-evidence.json"
    download.value.save_as(evidence)
    verified = subprocess.run(
        [sys.executable, "-m", "connector", "contracts", "verify", str(evidence)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_the_page_works_from_the_keyboard(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    checked(page)
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    # The chart's figures and an entry's proof open with the keyboard alone.
    page.get_by_text("The figures as a table").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("table", name="Completed transfers and bytes per day")).to_be_visible()
    summary = page.locator("li.entry").first.get_by_text("Entry and inclusion proof")
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.locator("li.entry").first.locator("[data-entry]")).to_be_visible()
    # The filter form submits from the keyboard too.
    page.get_by_label("Personal data only").focus()
    page.keyboard.press("Space")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"personal=yes"))


# ---------------------------------------------------------------- tampering shows


@pytest.mark.slow
def test_an_altered_entry_shows_failed(pair: AuditedPair, session: str, page: Page) -> None:
    index = leaf_index(pair, '"bytes":30000')
    (original,) = pair.sql("SELECT entry FROM transfer_log_leaf WHERE idx = ?", index)[0]
    pair.sql(
        "UPDATE transfer_log_leaf SET entry = ? WHERE idx = ?",
        original.replace('"bytes":30000', '"bytes":300'),
        index,
    )
    try:
        open_audit(page, pair, session)
        checked(page)
        statuses = all_statuses(page)
        assert statuses[index] == "FAILED: the proof leads to a different root than the checkpoint's", (
            statuses
        )
        assert all(s == "verified" for i, s in statuses.items() if i != index), statuses
        expect(page.locator("#verification-summary")).to_have_text(
            f"FAILED: 1 of {ENTRIES} entries on this page did not verify; {ENTRIES - 1} verified."
        )
        page.locator(f"li.entry[data-index='{index}']").scroll_into_view_if_needed()
        screenshot(page, "audit-tampered-entry")
        assert_accessible(page)
    finally:
        pair.sql("UPDATE transfer_log_leaf SET entry = ? WHERE idx = ?", original, index)


@pytest.mark.slow
def test_a_wrong_proof_shows_failed(pair: AuditedPair, session: str, page: Page) -> None:
    # The hash of entries 2 and 3 together (level 1, kept in entry 3's row, first of its subtree
    # hashes): it is in the audit path of entries 0 and 1 only.
    (original,) = pair.sql("SELECT nodes FROM transfer_log_leaf WHERE idx = 3")[0]
    pair.sql("UPDATE transfer_log_leaf SET nodes = ? WHERE idx = 3", b"\x00" * 32 + original[32:])
    try:
        open_audit(page, pair, session)
        checked(page)
        statuses = all_statuses(page)
        assert {i for i, s in statuses.items() if s.startswith("FAILED")} == {0, 1}, statuses
        assert statuses[0] == "FAILED: the proof leads to a different root than the checkpoint's"
        screenshot(page, "audit-tampered-proof")
    finally:
        pair.sql("UPDATE transfer_log_leaf SET nodes = ? WHERE idx = 3", original)


@pytest.mark.slow
def test_a_forged_checkpoint_fails_every_entry(pair: AuditedPair, session: str, page: Page) -> None:
    size, note = pair.sql("SELECT size, note FROM transfer_log_checkpoint ORDER BY size DESC LIMIT 1")[0]
    text, _, signatures = note.partition("\n\n")
    line = signatures.splitlines()[0]
    name, encoded = line[2:].split(" ")
    forged_signature = encoded[:12] + ("A" if encoded[12] != "A" else "B") + encoded[13:]
    (cosignature,) = pair.sql(
        "SELECT signature_line FROM transfer_log_cosignature WHERE checkpoint_size = ?", size
    )[0]
    cosigner, cosigned = cosignature.rstrip("\n")[2:].split(" ")
    raw = bytearray(base64.b64decode(cosigned))
    raw[-1] ^= 1
    pair.sql(
        "UPDATE transfer_log_cosignature SET signature_line = ? WHERE checkpoint_size = ?",
        f"— {cosigner} {base64.b64encode(bytes(raw)).decode()}\n",
        size,
    )
    pair.sql(
        "UPDATE transfer_log_checkpoint SET note = ? WHERE size = ?",
        f"{text}\n\n— {name} {forged_signature}\n",
        size,
    )
    try:
        open_audit(page, pair, session)
        checked(page)
        expect(page.locator("#checkpoint-signature")).to_have_text(
            "FAILED: the checkpoint's signature does not verify"
        )
        assert set(all_statuses(page).values()) == {"FAILED: the checkpoint itself did not verify"}
        expect(page.locator("[data-cosignature-status]")).to_have_text(
            "FAILED: the cosignature does not verify"
        )
        screenshot(page, "audit-forged-checkpoint")
    finally:
        pair.sql("UPDATE transfer_log_checkpoint SET note = ? WHERE size = ?", note, size)
        pair.sql(
            "UPDATE transfer_log_cosignature SET signature_line = ? WHERE checkpoint_size = ?",
            cosignature,
            size,
        )


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_the_exported_bundle_verifies_offline(pair: AuditedPair, session: str, page: Page) -> None:
    open_audit(page, pair, session)
    checked(page)
    today = datetime.now(UTC).date()
    page.get_by_label("From (UTC day)").last.fill((today - timedelta(days=1)).isoformat())
    page.get_by_label("To (UTC day, included)").last.fill(today.isoformat())
    with page.expect_download() as download:
        page.get_by_role("button", name="Download bundle").click()
    assert download.value.suggested_filename == f"transfer-log-{today - timedelta(days=1)}-to-{today}.zip"
    bundle = DOWNLOADS / "audit-bundle.zip"
    download.value.save_as(bundle)
    with zipfile.ZipFile(bundle) as opened:
        lines = opened.read("entries.jsonl").decode().splitlines()
        agreements = opened.read("agreements.json").decode()
    assert len(lines) == ENTRIES - 2  # the two entries of three days ago are outside the range
    assert pair.agreement_id in agreements
    verified = subprocess.run(
        [sys.executable, "-m", "connector", "audit", "verify", str(bundle)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VERIFIED" in verified.stdout

    with httpx.Client(base_url=pair.city.base_url, cookies={AUDITOR_COOKIE: session}, timeout=30) as client:
        bad = client.get("/ui/audit/export", params={"from": "2026-11-30", "to": "2026-11-01"})
        assert bad.status_code == 400
        assert "The first day is after the last day" in bad.text
        assert client.get("/ui/audit/export", params={"from": "yesterday"}).status_code == 400


# ---------------------------------------------------------------- read only


def _routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers (FastAPI includes them lazily)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(
                inner.routes, prefix + getattr(getattr(route, "include_context", None), "prefix", "")
            )
        elif isinstance(route, APIRoute):
            yield prefix + route.path, set(route.methods or ())


def _route_table(pair: AuditedPair) -> list[tuple[str, str]]:
    """Every (method, path) the connector serves, path parameters filled in."""
    core = ServiceCore.create(load_connector_settings(pair.city.data_dir))
    try:
        app = create_app(core)
        return [
            (method, re.sub(r"\{[^}]+\}", "x", path))
            for path, methods in _routes(app.router.routes)
            for method in sorted(methods)
        ]
    finally:
        core.engine.dispose()


def _state(pair: AuditedPair) -> dict[str, int]:
    tables = (
        "asset",
        "policy_definition",
        "contract_definition",
        "contract_negotiation",
        "contract_agreement",
        "transfer_log_leaf",
        "trust_list_member",
        "auditor",
        "transfer_log_cosignature",
    )
    present = {row[0] for row in pair.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {t: int(pair.sql(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables if t in present}


@pytest.mark.slow
def test_an_auditor_can_change_nothing(pair: AuditedPair) -> None:
    base = pair.city.base_url
    with auditor_client(base) as client:
        token = client.cookies[AUDITOR_COOKIE]
        page_html = client.get("/ui/audit").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert csrf
    # Every credential the auditor holds, offered every way a route might read one.
    headers = {
        "X-Api-Key": AUDITOR_PASSWORD,
        "Authorization": f"Bearer {AUDITOR_PASSWORD}",
        "Cookie": f"{AUDITOR_COOKIE}={token}; tessera_session={token}",
    }
    routes = [(m, p) for m, p in _route_table(pair) if m not in ("GET", "HEAD")]
    own = {("POST", "/ui/audit/login"), ("POST", "/ui/audit/logout")}
    assert len(routes) > 20, routes
    before = _state(pair)
    accepted = []
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as client:
        for method, path in routes:
            if (method, path) in own:
                continue
            for body, content_type in (
                ("{}", "application/json"),
                (f"csrf_token={csrf.group(1)}", "application/x-www-form-urlencoded"),
            ):
                response = client.request(
                    method, path, content=body, headers={**headers, "Content-Type": content_type}
                )
                refused = response.status_code in (401, 403) or (
                    response.status_code == 303 and response.headers["location"].startswith("/ui/login")
                )
                if not refused:
                    accepted.append(
                        f"{method} {path} ({content_type}): {response.status_code} {response.text[:200]}"
                    )
        assert not accepted, "\n".join(accepted)
        # Reading the operator's pages and API is refused too.
        for path in ("/ui", "/ui/agreements", "/ui/negotiations", "/management/v3/assets/card-trips"):
            response = client.get(path, headers=headers)
            assert response.status_code in (303, 401), (path, response.status_code)
            if response.status_code == 303:
                assert response.headers["location"].startswith("/ui/login")
    assert _state(pair) == before


@pytest.mark.slow
def test_an_operator_session_is_not_an_auditor_session(pair: AuditedPair) -> None:
    base = pair.city.base_url
    api_key = (pair.city.data_dir / "management-api-key").read_text().strip()
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as client:
        form = client.get("/ui/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf
        signed = client.post(
            "/ui/login", data={"csrf_token": csrf.group(1), "api_key": api_key, "next": "/ui"}
        )
        assert signed.status_code == 303
        operator_token = client.cookies["tessera_session"]
        refused = client.get(
            "/ui/audit",
            headers={"Cookie": f"{AUDITOR_COOKIE}={operator_token}; tessera_session={operator_token}"},
        )
        assert (refused.status_code, refused.headers["location"]) == (303, "/ui/audit/login")
        forged = client.get("/ui/audit", headers={"Cookie": f"{AUDITOR_COOKIE}=9999999999.x.00.{AUDITOR}"})
        assert forged.status_code == 303


@pytest.mark.slow
def test_removing_an_auditor_ends_its_session(pair: AuditedPair) -> None:
    city_dir = str(pair.city.data_dir)
    added = tessera("auditor", "add", "carol", "--dir", city_dir)
    assert added.code == 0, added.stderr
    password = added.stdout.strip()
    with auditor_client(pair.city.base_url, "carol", password) as client:
        assert client.get("/ui/audit").status_code == 200
        reset = tessera("auditor", "add", "carol", "--reset", "--dir", city_dir)
        assert reset.code == 0, reset.stderr
        assert client.get("/ui/audit").status_code == 303  # a new password ends old sessions
    with auditor_client(pair.city.base_url, "carol", reset.stdout.strip()) as client:
        assert client.get("/ui/audit").status_code == 200
        removed = tessera("auditor", "remove", "carol", "--dir", city_dir)
        assert removed.code == 0, removed.stderr
        assert client.get("/ui/audit").status_code == 303


@pytest.mark.slow
def test_a_log_that_no_longer_extends_its_checkpoint_is_not_signed(
    pair: AuditedPair, session: str, page: Page
) -> None:
    # The first eight entries' subtree (level 3, the third hash in entry 7's row), as a consistency
    # proof from the signed checkpoint reads it.
    (original,) = pair.sql("SELECT nodes FROM transfer_log_leaf WHERE idx = 7")[0]
    pair.sql("UPDATE transfer_log_leaf SET nodes = ? WHERE idx = 7", original[:64] + b"\x01" * 32)
    try:
        refusal = {
            "subject": "catalog",
            "counterParty": pair.transit.did,
            "by": "us",
            "reason": "rate limited",
        }
        append_at(pair.city, [(REFUSAL, refusal)], time.time())
        open_audit(page, pair, session)
        checked(page)
        expect(page.get_by_role("alert")).to_contain_text(
            "This connector refused to sign a checkpoint of its log"
        )
        assert status_of(page, ENTRIES) == "not checked: newer than the signed checkpoint"
        expect(page.locator("#verification-summary")).to_contain_text(
            "1 newer than the signed checkpoint, not checked."
        )
        screenshot(page, "audit-unsigned-growth")
    finally:
        pair.sql("UPDATE transfer_log_leaf SET nodes = ? WHERE idx = 7", original)


@pytest.mark.slow
def test_sign_in_attempts_are_rate_limited(pair: AuditedPair) -> None:
    # Last in this module: it uses up this address's sign-in attempts for a minute.
    with httpx.Client(base_url=pair.city.base_url, follow_redirects=False, timeout=30) as client:
        form = client.get("/ui/audit/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf

        def attempt(password: str) -> httpx.Response:
            return client.post(
                "/ui/audit/login",
                data={
                    "csrf_token": csrf.group(1),
                    "name": AUDITOR,
                    "password": password,
                    "next": "/ui/audit",
                },
            )

        answers = [attempt(f"guess-number-{n:04}") for n in range(12)]
        codes = [a.status_code for a in answers]
        assert codes[-1] == 429, codes
        assert set(codes) == {401, 429}, codes
        assert int(answers[-1].headers["retry-after"]) > 0
        assert "Too many sign-in attempts" in answers[-1].text
        assert attempt(AUDITOR_PASSWORD).status_code == 429  # even the right password waits
