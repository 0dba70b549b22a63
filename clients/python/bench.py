#!/usr/bin/env python3
"""No-op job throughput of the Python worker against `onceq serve` (embedded store), printed
beside the Rust worker's on the same server in the same run.

    python3 clients/python/bench.py [--jobs 50000] [--concurrency 256] [--onceq target/release/onceq]

It starts `onceq serve` (embedded store in a temporary directory, loopback, default durability:
fsync), fills a queue with --jobs no-op jobs (not timed), and times the worker from its start
until every job is acked: batched leases (up to concurrency + prefetch jobs per call) and batched
acks. Then the same for the Rust worker (`onceq-worker`'s example `worker_throughput`, built in
release mode by this script when missing). Needs the package installed (`pip install -e
clients/python`) and a release build of onceq (`cargo build --release -p onceq-cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import onceq

REPO = Path(__file__).resolve().parents[2]
LISTENING = "onceq listening on http://"


def serve(binary: Path, data_dir: Path) -> "tuple[subprocess.Popen[str], str]":
    process = subprocess.Popen([str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(LISTENING):
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
            return process, "http://" + line[len(LISTENING):].split()[0]
    raise SystemExit(f"onceq serve exited ({process.wait()}) before listening")


def fill(client: onceq.Client, queue: str, jobs: int) -> None:
    for start in range(0, jobs, 1000):
        client.enqueue_many(queue, [onceq.job(None) for _ in range(min(1000, jobs - start))])


async def python_worker(url: str, queue: str, jobs: int, concurrency: int) -> float:
    async with onceq.AsyncClient(url) as client:
        worker = onceq.Worker(client, ack_linger_ms=2)

        @worker.task(queue, concurrency=concurrency, prefetch=concurrency, wait_ms=200)
        async def noop(job: onceq.RunningJob) -> None:
            return None

        start = time.perf_counter()
        runner = asyncio.create_task(worker.run_async())
        while worker.stats.acked < jobs:
            if runner.done():
                runner.result()
                raise SystemExit(f"the worker stopped early: {worker.stats}")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        worker.stop()
        await runner
        if worker.stats.ack_refused or worker.stats.nacked:
            raise SystemExit(f"the run was not clean: {worker.stats}")
        return elapsed


def rust_worker(url: str, queue: str, jobs: int, concurrency: int, target: Path) -> str:
    binary = target / "release/examples/worker_throughput"
    if not binary.exists():
        print(f"building {binary} (cargo build --release -p onceq-worker --example worker_throughput)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-p", "onceq-worker", "--example", "worker_throughput"],
                       cwd=REPO, check=True, env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
    out = subprocess.run([str(binary), url, queue, str(jobs), str(concurrency)], check=True, capture_output=True,
                         text=True).stdout.strip()
    return out.splitlines()[-1]


def main() -> None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per worker run (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=256, help="handlers at once (default 256)")
    parser.add_argument("--onceq", type=Path, default=target / "release/onceq", help="the onceq binary")
    parser.add_argument("--no-rust", action="store_true", help="skip the Rust worker's run")
    args = parser.parse_args()
    if not args.onceq.exists():
        raise SystemExit(f"{args.onceq} not found: cargo build --release -p onceq-cli (or pass --onceq)")
    with tempfile.TemporaryDirectory(prefix="onceq-bench-") as tmp:
        process, url = serve(args.onceq, Path(tmp))
        try:
            with onceq.Client(url) as client:
                fill(client, "bench-python", args.jobs)
                seconds = asyncio.run(python_worker(url, "bench-python", args.jobs, args.concurrency))
                print(f"python-worker {args.jobs} jobs in {seconds:.2f} s: {args.jobs / seconds:.0f} jobs/s "
                      f"(concurrency {args.concurrency}, Python {sys.version.split()[0]})")
                if not args.no_rust:
                    fill(client, "bench-rust", args.jobs)
                    print(rust_worker(url, "bench-rust", args.jobs, args.concurrency, target))
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
