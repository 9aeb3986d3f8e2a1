"""Calling the running connector's Management API from the command line.

The connector is found at its ``public_url`` and authenticated with its
management API key, both read from the participant directory. Every failure
(not running, refused, an error answer) becomes one ``ManagementCallError``
line; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from connector.cli.common import participant_settings
from runtime.errors import StartupError

DEFAULT_TIMEOUT_SECONDS = 30.0


class ManagementCallError(StartupError):
    """The connector could not be asked, or answered with an error."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: httpx.Headers


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    if isinstance(body, list) and body and isinstance(body[0], dict):  # EDC error body
        first = body[0]
        kind = f"{first.get('type')}: " if first.get("type") else ""
        return " ".join(f"{kind}{first.get('message', '')}".split())[:500]
    return " ".join(json.dumps(body).split())[:300]


class ManagementClient:
    def __init__(self, base_url: str, api_key: str, name: str, data_dir: Path) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._name = name
        self._data_dir = data_dir

    @classmethod
    def for_participant(cls, data_dir: Path) -> ManagementClient:
        settings = participant_settings(data_dir)
        if settings.kind != "connector":
            raise StartupError(f"{settings.data_dir} is a {settings.kind} service, not a connector")
        key = settings.management_api_key
        assert key is not None  # load_settings reads it or fails
        return cls(settings.public_url, key.get_secret_value(), settings.name, settings.data_dir)

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> Answer:
        url = self.base_url + path
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                response = client.request(method, url, json=body, headers={"X-Api-Key": self._api_key})
        except httpx.ConnectError:
            raise ManagementCallError(
                f"connector {self._name} does not answer at {self.base_url}: "
                f"is it running? (tessera serve --dir {self._data_dir})"
            ) from None
        except httpx.TimeoutException:
            raise ManagementCallError(
                f"connector {self._name} did not answer {method} {path} in time"
            ) from None
        except httpx.HTTPError as exc:
            raise ManagementCallError(f"calling connector {self._name} at {url} failed: {exc}") from None
        if response.status_code >= 400:
            raise ManagementCallError(
                f"{method} {path} failed: HTTP {response.status_code} {_error_detail(response)}"
            )
        parsed: Any = None
        if response.content:
            try:
                parsed = response.json()
            except ValueError:
                raise ManagementCallError(f"{method} {path} did not answer JSON") from None
        return Answer(response.status_code, parsed, response.headers)
