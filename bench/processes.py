"""What the benchmarks share for running participants: environments, servers, throwaway databases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


@contextmanager
def environment_for(database_url: str | None) -> Iterator[None]:
    """Only the given database URL (if any) reaches load_settings from the environment."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("TESSERA_")}
    for name in saved:
        del os.environ[name]
    if database_url is not None:
        os.environ["TESSERA_DATABASE_URL"] = database_url
    try:
        yield
    finally:
        os.environ.pop("TESSERA_DATABASE_URL", None)
        os.environ.update(saved)


def server_environment(**settings: str) -> dict[str, str]:
    """A served participant's environment: none of ours, request log lines unbuffered, plus ``settings``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TESSERA_")}
    environment["PYTHONUNBUFFERED"] = "1"  # request log lines land as they are written
    environment.update(settings)
    return environment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def serving(
    name: str, data_dir: Path, base_url: str, log_path: Path, environment: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``tessera serve`` on ``data_dir`` until the block ends (answering /health first); always stopped."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "serve", "--dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=environment,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        with httpx.Client(timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail(log_path)}")
                try:
                    if client.get(f"{base_url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer /health in time:\n{tail(log_path)}")
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def postgres_admin_url() -> str:
    return os.environ.get("TESSERA_TEST_POSTGRES_URL", DEFAULT_PG)


def postgres_unreachable(admin_url: str) -> str | None:
    """Why the server does not answer, or None when it does."""
    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def throwaway_postgres(admin_url: str, count: int = 1) -> Iterator[list[str]]:
    """``count`` new databases on the server, dropped (connections and all) when the block ends."""
    names: list[str] = []
    base = admin_url.rsplit("/", 1)[0]
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for _ in range(count):
                name = f"tessera_bench_{uuid.uuid4().hex[:12]}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                names.append(name)
        yield [f"{base}/{name}" for name in names]
    finally:
        if names:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                for name in names:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
