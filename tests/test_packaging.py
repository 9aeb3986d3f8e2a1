"""The distribution a user installs carries everything the product reads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_migrations_schemas_and_licences(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("tessera-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "migrations/connector/env.py",
        "migrations/connector/script.py.mako",
        "migrations/connector/versions/0001_participant_identity.py",
        "migrations/consent/versions/0001_participant_identity.py",
        "catalog/reference/dsp-2025-1/LICENSE",
        "catalog/reference/dsp-2025-1/NOTICE",
        "catalog/reference/dsp-2025-1/context/dspace.jsonld",
        "catalog/reference/dsp-2025-1/transfer/transfer-error-schema.json",
        "connector/cli/__init__.py",
        "connector/pages/templates/base.html",
        "connector/pages/static/pages.css",
        "connector/pages/templates/audit_timeline.html",
        "connector/auditor/static/audit-verify.js",
        "consent/pages/templates/choices.html",
        "consent/pages/static/consent.css",
        "runtime/static/pages-base.css",
        "consent/pages/static/consent.js",
        "identity/tokens.py",
        "runtime/service.py",
    ):
        assert required in names, f"{required} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tessera = connector.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
