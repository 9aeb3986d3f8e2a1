"""Every page's stylesheet: the look all Tessera pages share, then the service's own rules.

The operator (and auditor) pages of a connector and the citizen pages of the
consent service link one stylesheet each; both begin with the shared rules
(``runtime/static/pages-base.css``) and go on with their own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import Participant
from tests.consent_helpers import consent_service

ROOT = Path(__file__).resolve().parents[1]
BASE = (ROOT / "runtime" / "static" / "pages-base.css").read_text()


def _served(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/css")
    assert response.headers["x-content-type-options"] == "nosniff"
    text: str = response.text
    return text


def test_operator_pages_get_the_shared_look_then_their_own(
    make_connector: Callable[..., Participant],
) -> None:
    css = _served(make_connector("city").client(), "/ui/static/pages.css")
    assert css.startswith(BASE)
    own = css.removeprefix(BASE)
    assert ".field label" in own  # the operator forms' own rules follow
    assert "--text: #1b1f24;" in BASE  # the colours every page shares
    assert ":root" not in own, "the shared variables are defined once"


def test_citizen_pages_get_the_shared_look_then_their_own(tmp_path: Path) -> None:
    with consent_service(tmp_path) as service, TestClient(service.app()) as client:
        css = _served(client, "/citizen/static/consent.css")
    assert css.startswith(BASE)
    own = css.removeprefix(BASE)
    assert "button.secondary" in own
    assert ":root" not in own, "the shared variables are defined once"
