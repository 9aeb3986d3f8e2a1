"""Push of a large file into a sink, over loopback: throughput and memory of both ends.

A sink server (FastAPI with ``sink_router``, its own uvicorn process) receives

* baseline: the file streamed by a bare httpx upload (1 MiB reads, no data-plane code);
* push: the same file sent by ``push(source_stream(File ...))``, the provider's push path.

Each upload runs in its own process, so its peak memory is its own; the sink's memory is
read from /proc for its process (current RSS before the uploads, peak after). The file is
sparse (2 GiB; 256 MiB in quick mode), so the disk is not the bottleneck on the read side;
the sink really writes it (and fsyncs) before answering. Target (issue 5): the transfer's
memory grows by less than 50 MiB at each end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_gate import memory_kib
from bench.common import BenchResult, Figure, Measure, Target
from bench.processes import free_port

NAME = "push"
TITLE = "push of a large file into a sink (throughput, memory at both ends)"
TARGET_MEMORY_MIB = 50
ROOT = Path(__file__).resolve().parents[1]


def _process_memory_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def _plain_upload(path: Path, endpoint: str, secret: str) -> None:
    async def body() -> Any:
        with path.open("rb", buffering=0) as handle:
            while data := await asyncio.to_thread(handle.read, 1024 * 1024):
                yield data

    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(endpoint, content=body(), headers={"Authorization": f"Bearer {secret}"})
        response.raise_for_status()


async def _push_upload(path: Path, endpoint: str, secret: str) -> None:
    from connector.dataplane.push import PushTarget, push, source_stream
    from connector.dataplane.sources import SourceConfig

    config = SourceConfig(file_roots=(path.parent,))
    target = PushTarget(endpoint, {"Authorization": f"Bearer {secret}"})
    await push(
        source_stream({"type": "File", "path": str(path)}, config), target, media_type="application/x-ndjson"
    )


def _child(mode: str, path: Path, endpoint: str, secret: str) -> dict[str, float]:
    import connector.dataplane.push  # noqa: F401 - imported before measuring: memory counts the upload only

    before, _ = memory_kib()
    started = time.perf_counter()
    asyncio.run((_plain_upload if mode == "plain" else _push_upload)(path, endpoint, secret))
    seconds = time.perf_counter() - started
    _, peak = memory_kib()
    return {"seconds": seconds, "growth_mib": (peak - before) / 1024}


def _serve_sink(data_dir: Path, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    from connector.dataplane.sink import sink_router

    app = FastAPI()
    app.include_router(sink_router(data_dir))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _run_upload(mode: str, path: Path, endpoint: str, secret: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_push", "--upload", mode, str(path), endpoint, secret],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{mode} upload failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool) -> BenchResult:
    from connector.dataplane.sink import create_sink_destination, read_sink

    size = (256 if quick else 2048) * 1024**2
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tessera-bench-push-") as tmp:
        source = Path(tmp) / "provider" / "large.ndjson"
        source.parent.mkdir()
        with source.open("wb") as handle:
            handle.truncate(size)
        data_dir = Path(tmp) / "consumer"
        data_dir.mkdir()
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_push", "--serve-sink", str(data_dir), str(port)],
            cwd=ROOT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the sink server did not start") from None
                    time.sleep(0.2)
            sink_before, _ = _process_memory_kib(server.pid)
            results: dict[str, dict[str, float]] = {}
            for mode in ("plain", "push"):
                destination = create_sink_destination(
                    data_dir, f"http://127.0.0.1:{port}", name=f"{mode}.ndjson"
                )
                results[mode] = _run_upload(mode, source, destination.endpoint, destination.secret)
                record = read_sink(data_dir, destination.sink_id)
                if record is None or record.received_bytes != size or record.received_path is None:
                    raise RuntimeError(f"the sink did not receive the whole {mode} upload")
                record.received_path.unlink()  # keep the disk free for the next run
            _, sink_peak = _process_memory_kib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    mib = size / 1024**2
    rate = {mode: mib / r["seconds"] for mode, r in results.items()}
    sink_growth = (sink_peak - sink_before) / 1024
    figures = [
        Figure("push throughput into the sink", rate["push"], "MiB/s",
               Measure("bare httpx upload into the sink", rate["plain"], "MiB/s")),
        Figure("pushing process: peak memory growth", results["push"]["growth_mib"], "MiB",
               Measure("bare httpx upload: peak memory growth", results["plain"]["growth_mib"], "MiB")),
        Figure("sink server: peak memory growth over both uploads", sink_growth, "MiB"),
    ]  # fmt: skip
    targets = [
        Target("the pushing process grows by less than 50 MiB", figures[1].label, TARGET_MEMORY_MIB, "MiB",
               "at_most", results["push"]["growth_mib"]),
        Target("the sink grows by less than 50 MiB", figures[2].label, TARGET_MEMORY_MIB, "MiB", "at_most",
               sink_growth),
    ]  # fmt: skip
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=targets,
        notes=[
            f"a sparse {mib:.0f} MiB file, pushed over loopback into a sink that writes and fsyncs it; each "
            "upload in its own process, the sink in another",
            f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs "
            "(the machine is shared: figures vary between runs)",
        ],
        parameters={"mode": "quick" if quick else "full", "bytes": size},
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--upload"]:
        print(json.dumps(_child(sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5])))
    elif sys.argv[1:2] == ["--serve-sink"]:
        _serve_sink(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv).to_json(), indent=1))
