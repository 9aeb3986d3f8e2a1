"""The benchmark runner, end to end: one quick benchmark run in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent


def test_quick_peer_auth_run_writes_figures_baseline_and_plot(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "peer_auth", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "CPU per authentication (SQLite)" in completed.stdout

    document = json.loads((tmp_path / "peer_auth.json").read_text(encoding="utf-8"))
    assert document["name"] == "peer_auth"
    assert document["quick"] is True
    figures = {figure["label"]: figure for figure in document["figures"]}
    for label in (
        "peer authentications per second (SQLite)",
        "  of which issue token (mean)",
        "  of which verify + record jti (SQLite, mean)",
        "CPU per authentication (SQLite)",
    ):
        figure = figures[label]
        assert figure["value"] > 0
        assert figure["baseline"]["value"] > 0
        assert figure["baseline"]["label"].startswith("raw Ed25519")
    assert figures["peer authentications per second (SQLite)"]["baseline"]["unit"] == "/s"
    [target] = document["targets"]
    assert target["figure"] == "CPU per authentication (SQLite)"
    assert target["limit"] == 500.0
    assert isinstance(target["met"], bool)
    assert target["met"] == (target["measured"] <= target["limit"])

    # How fast the machine was, before and after: figures of different runs can be compared by it.
    before, after = document["environment"]["reference_workload_ms"]
    assert 0 < before < 10_000
    assert 0 < after < 10_000
    assert any(note.startswith("machine speed: a fixed Python workload") for note in document["notes"])

    png = tmp_path / "peer_auth.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
