"""The worker against a real server: concurrency and batched acks, heartbeats that keep a long
job's lease, a refused heartbeat that cancels its handler (async and thread), the per-job
deadline, retries with the queue's backoff, FailJob, and graceful shutdown on SIGTERM that
releases the jobs leased but not started."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

import onceq
from worker_helpers import drained, running, wait_for


def test_every_job_runs_once_and_is_acked_with_concurrency(client: onceq.Client, queue: str) -> None:
    client.enqueue_many(queue, [onceq.job({"n": i}) for i in range(300)])
    seen: List[int] = []
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=8, prefetch=16)
    def handle(job: onceq.RunningJob) -> None:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.002)
        with lock:
            seen.append(job.payload["n"])
            in_flight[0] -= 1

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 300, 30), worker.stats
    assert sorted(seen) == list(range(300))
    assert 1 < in_flight[1] <= 8, in_flight
    assert drained(client, queue)()
    assert worker.stats.nacked == 0 and worker.stats.ack_refused == 0


def test_async_handlers_run_on_the_loop(client: onceq.Client, queue: str) -> None:
    client.enqueue_many(queue, [onceq.job(i) for i in range(50)])
    seen: List[int] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=10)
    async def handle(job: onceq.RunningJob) -> None:
        await asyncio.sleep(0.001)
        seen.append(job.payload)

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 50, 30), worker.stats
    assert sorted(seen) == list(range(50))


def test_heartbeats_keep_a_long_job_leased(client: onceq.Client, queue: str) -> None:
    enq = client.enqueue(queue, "slow")
    calls: List[int] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=1, visibility_timeout_ms=800, heartbeat_interval_ms=150)
    def handle(job: onceq.RunningJob) -> None:
        calls.append(job.attempt)
        time.sleep(2.5)  # more than three leases long

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 1, 15), worker.stats
    assert calls == [1]
    assert worker.stats.lost == 0
    with pytest.raises(onceq.NotFound):
        client.job_get(enq.id)


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_a_refused_heartbeat_cancels_the_handler(client: onceq.Client, queue: str, kind: str) -> None:
    enq = client.enqueue(queue, "doomed")
    started = threading.Event()
    outcome: Dict[str, object] = {}
    holder: Dict[str, onceq.RunningJob] = {}
    worker = onceq.Worker(client, shutdown_timeout=2)

    if kind == "async":
        @worker.task(queue, concurrency=1, visibility_timeout_ms=3000, heartbeat_interval_ms=100)
        async def handle(job: onceq.RunningJob) -> None:
            holder["job"] = job
            started.set()
            try:
                await asyncio.sleep(30)
                outcome["finished"] = True
            except asyncio.CancelledError:
                outcome["cancelled"] = job.cancel_reason
                raise
    else:
        @worker.task(queue, concurrency=1, visibility_timeout_ms=3000, heartbeat_interval_ms=100)
        def handle(job: onceq.RunningJob) -> None:
            holder["job"] = job
            started.set()
            if job.cancelled.wait(30):
                outcome["cancelled"] = job.cancel_reason
            else:
                outcome["finished"] = True

    with running(worker):
        assert started.wait(10)
        job = holder["job"]
        # Someone else takes the lease away: the job is released under the worker's feet (the
        # queue paused first, so that the worker cannot lease it again before we look).
        client.queue_pause(queue)
        client.release(job.id, job.lease_token)
        assert wait_for(lambda: "cancelled" in outcome, 5), outcome
        assert outcome == {"cancelled": "lease_lost"}
        assert worker.stats.lost >= 1
        # The worker settles nothing for a lost lease; the job waits for its next lease.
        assert worker.stats.acked == 0 and worker.stats.nacked == 0
    info = client.job_get(enq.id)
    assert (info.state, info.attempt, info.errors) == ("ready", 0, [])


def test_a_cancelled_job_stops_its_handler_and_ends_cancelled_at_once(client: onceq.Client, queue: str) -> None:
    enq = client.enqueue(queue, "stop me")
    started = threading.Event()
    outcome: Dict[str, object] = {}
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=1, visibility_timeout_ms=30_000, heartbeat_interval_ms=100)
    async def handle(job: onceq.RunningJob) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
            outcome["finished"] = True
        except asyncio.CancelledError:
            outcome["cancelled"] = job.cancel_reason
            raise

    with running(worker):
        assert started.wait(10)
        assert client.cancel(enq.id).state == "leased"
        assert wait_for(lambda: "cancelled" in outcome, 5), outcome
        assert outcome == {"cancelled": "cancelled"}
        # Well before the 30 s lease would expire: the worker gave the lease back.
        assert wait_for(lambda: client.job_get(enq.id).state == "cancelled", 5)
        assert worker.stats.cancelled == 1 and worker.stats.lost == 0 and worker.stats.acked == 0


def test_a_handler_past_its_deadline_is_cancelled_and_its_job_nacked(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, max_attempts=1)
    enq = client.enqueue(queue, "too slow")
    cancelled: List[str] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=1, deadline_ms=300)
    async def handle(job: onceq.RunningJob) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(job.cancel_reason or "")
            raise

    with running(worker):
        assert wait_for(lambda: worker.stats.deadline_exceeded == 1 and worker.stats.nacked == 1, 10), worker.stats
    assert cancelled == ["deadline"]
    dead = client.job_get(enq.id)
    assert dead.state == "dead"
    assert [e.error for e in dead.errors] == ["deadline exceeded: the handler ran past 300 ms"]


def test_an_exception_retries_with_the_queue_backoff(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, max_attempts=3, backoff={"initial_ms": 700, "max_ms": 700, "jitter": "none"})
    client.enqueue(queue, "flaky")
    attempts: List[tuple] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=1, wait_ms=100)
    def handle(job: onceq.RunningJob) -> None:
        attempts.append((job.attempt, time.monotonic()))
        if job.attempt == 1:
            raise ConnectionError("smtp down")

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 1, 15), worker.stats
    assert [a for a, _ in attempts] == [1, 2]
    assert attempts[1][1] - attempts[0][1] >= 0.65, "the retry came before the queue's 700 ms backoff"
    assert worker.stats.nacked == 1


def test_retry_later_and_fail_job(client: onceq.Client, queue: str) -> None:
    a = client.enqueue(queue, "later")
    b = client.enqueue(queue, "poison")
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=2)
    def handle(job: onceq.RunningJob) -> None:
        if job.payload == "later":
            raise onceq.RetryLater(delay_ms=60_000, reason="not yet")
        raise onceq.FailJob("cannot parse")

    with running(worker):
        assert wait_for(lambda: worker.stats.nacked == 1 and worker.stats.failed == 1, 10), worker.stats
    later, poison = client.job_get(a.id), client.job_get(b.id)
    assert later.state == "scheduled" and [e.error for e in later.errors] == ["not yet"]
    assert poison.state == "dead" and [e.error for e in poison.errors] == ["cannot parse"]


WORKER_SCRIPT = textwrap.dedent("""
    import sys, time, onceq
    url, queue, marks = sys.argv[1], sys.argv[2], sys.argv[3]
    worker = onceq.Worker(onceq.Client(url), shutdown_timeout=10)

    @worker.task(queue, concurrency=1, prefetch=5, wait_ms=200)
    def handle(job):
        with open(marks, "a") as f:
            f.write(f"start {job.id}\\n")
        time.sleep(1.0)
        with open(marks, "a") as f:
            f.write(f"done {job.id}\\n")

    worker.run()
    print("stats", worker.stats, flush=True)
""")


def test_sigterm_releases_unstarted_jobs_and_finishes_the_running_one(client: onceq.Client, queue: str,
                                                                      server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = [e.id for e in client.enqueue_many(queue, [onceq.job(i) for i in range(6)])]
    marks = tmp_path / "marks"
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), server.url, queue, str(marks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: marks.exists() and "start" in marks.read_text(), 20), "no job started"
        assert wait_for(lambda: client.queue_get(queue).stats.leased == 6, 10), client.queue_get(queue).stats
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = marks.read_text().split()
    started = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "start"]
    done = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "done"]
    assert len(started) == 1 and done == started, lines
    stats = client.queue_get(queue).stats
    assert (stats.ready, stats.leased) == (5, 0), stats
    for jid in ids:
        if jid in done:
            with pytest.raises(onceq.NotFound):
                client.job_get(jid)
        else:
            job = client.job_get(jid)
            assert (job.state, job.attempt, job.errors) == ("ready", 0, []), job


def test_bad_worker_options_are_refused(client: onceq.Client) -> None:
    worker = onceq.Worker(client, shutdown_timeout=2)
    with pytest.raises(ValueError, match="concurrency"):
        worker.task("q", concurrency=0)
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        worker.task("q", visibility_timeout_ms=1000, heartbeat_interval_ms=1000)
    with pytest.raises(ValueError, match="wait_ms"):
        worker.task("q", wait_ms=20_001)
    with pytest.raises(ValueError, match="ack_batch_max"):
        onceq.Worker(client, ack_batch_max=1001)
    with pytest.raises(ValueError, match="no task"):
        asyncio.run(onceq.Worker(client).run_async())


def test_stop_before_start_and_twice(client: onceq.Client, queue: str) -> None:
    client.enqueue(queue, 1)
    worker = onceq.Worker(client)

    @worker.task(queue)
    def handle(job: onceq.RunningJob) -> None:
        raise AssertionError("a stopped worker runs nothing")

    worker.stop()
    asyncio.run(worker.run_async())
    worker.stop()
    assert worker.stats.leased == 0
    assert client.queue_get(queue).stats.ready == 1
