"""Helpers for the foundation tests: participants, CLI runs in parallel, real serve processes.

Nothing here is a fixture: the tests call these functions directly, so each
test shows what it sets up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.participant import init_participant
from tests.conftest import CliResult, free_port

REPO = Path(__file__).resolve().parents[1]
PUBLIC_KEY_FILE = Path("keys/public-key.jwk")
PRIVATE_KEY_FILE = Path("keys/private-key.pem")

# Where the DSP 2025-1 reference (schemas and examples) is read from, first found wins.
DSP_REFERENCE_CANDIDATES = (
    os.environ.get("TESSERA_DSP_REFERENCE", ""),
    "/work/shared/reference/dsp-2025-1",
    str(REPO / "catalog" / "reference" / "dsp-2025-1"),
)


def new_participant(parent: Path, name: str = "city", kind: str = "connector") -> tuple[Path, int]:
    """A participant directory made in-process (setup, not the thing under test), and its port."""
    port = free_port()
    data_dir = parent / name
    init_participant(data_dir, name, port, kind=kind)
    return data_dir, port


def public_jwk_of(data_dir: Path) -> dict[str, str]:
    loaded: dict[str, str] = json.loads((data_dir / PUBLIC_KEY_FILE).read_text())
    return loaded


def cli_env() -> dict[str, str]:
    """The environment the CLI runs with: ours minus any TESSERA_* (as the tessera_cli fixture does)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}


Call = tuple[Sequence[str], dict[str, str] | None]


def run_parallel(
    cli: Callable[..., CliResult], calls: Sequence[Call], timeout: float = 45
) -> list[CliResult]:
    """Run independent CLI calls at once (each is mostly Python start-up); results in call order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cli, *args, env=env, timeout=timeout) for args, env in calls]
        return [future.result() for future in futures]


def one_line_error(result: CliResult, *needles: str) -> str | None:
    """None when ``result`` is a clean operator error naming every needle; else what is wrong."""
    lines = result.stderr.strip().splitlines()
    if result.code == 0:
        return f"exit code 0 (stdout: {result.stdout[-300:]!r})"
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        return f"a traceback was printed: {result.stderr[-600:]!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr, not one: {result.stderr[-600:]!r}"
    missing = [needle for needle in needles if needle not in lines[0]]
    if missing:
        return f"{lines[0]!r} does not name {missing}"
    return None


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    problem = one_line_error(result, *needles)
    assert problem is None, problem
    return result.stderr.strip()


def tree_snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and (for files) its bytes."""
    snapshot: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        content = path.read_bytes() if path.is_file() else None
        snapshot[str(path.relative_to(root))] = (path.stat().st_mode, content)
    return snapshot


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if line.strip()]


@contextmanager
def serving(
    data_dir: Path, port: int, env: dict[str, str] | None = None, startup_timeout: float = 30
) -> Iterator[Served]:
    """``tessera serve --dir DATA_DIR`` in a subprocess, ready (``/health`` is 200) on ``port``.

    Its stdout (the JSON log) goes to a file next to the directory; the process
    is terminated (then killed) when the block ends, whatever happens.
    """
    log_path = data_dir.parent / f"{data_dir.name}-serve.log"
    err_path = data_dir.parent / f"{data_dir.name}-serve.err"
    full_env = {**cli_env(), **(env or {})}
    with log_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "serve", "--dir", str(data_dir)],
            stdout=out,
            stderr=err,
            env=full_env,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {process.returncode}: {err_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer /health within {startup_timeout}s")
            time.sleep(0.1)
        yield Served(process, base_url, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def table_column(output: str, header: str) -> str:
    """The text of a rich table's column named ``header``, its wrapped fragments joined."""

    def columns(marker: str) -> list[str]:
        joined: list[str] = []
        for line in output.splitlines():
            if line.startswith(marker):
                cells = [cell.strip() for cell in line.split(marker)[1:-1]]
                joined = [a + b for a, b in zip(joined, cells, strict=True)] if joined else cells
        return joined

    # Headers may wrap too; compare them without spaces.
    index = [name.replace(" ", "") for name in columns("┃")].index(header.replace(" ", ""))
    return columns("│")[index]


@cache
def dsp_reference() -> Path | None:
    for candidate in DSP_REFERENCE_CANDIDATES:
        if candidate and (Path(candidate) / "common").is_dir():
            return Path(candidate)
    return None


def dsp_schema_errors(schema_file: str, instance: Any) -> list[str]:
    """Errors of ``instance`` against a DSP 2025-1 schema (``common/…-schema.json``), resolved offline.

    Skips the test, saying where it looked, when no copy of the reference is present.
    """
    from jsonschema import Draft201909Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT201909

    root = dsp_reference()
    if root is None:
        looked = ", ".join(c for c in DSP_REFERENCE_CANDIDATES if c)
        pytest.skip(f"DSP 2025-1 reference schemas not found (looked in {looked}; set TESSERA_DSP_REFERENCE)")
    resources = []
    for path in root.glob("*/*-schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema, default_specification=DRAFT201909)))
    registry: Registry[Any] = Registry().with_resources(resources)
    validator = Draft201909Validator(json.loads((root / schema_file).read_text()), registry=registry)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]
