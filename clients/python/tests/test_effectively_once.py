"""The effectively-once decorator's three paths against a real server's idempotency store:
completed (the handler does not run, the job is acked), held elsewhere (the job is released,
no attempt spent, and runs once the key is free), acquired (the handler runs once, its result is
recorded, the job acked); and a handler that raises gives its key back."""

from __future__ import annotations

import threading
from typing import List

import pytest

import onceq
from onceq.worker import default_key
from worker_helpers import running, wait_for


def key_of(queue: str, dedup_id: str) -> str:
    return f"onceq:{queue}:{dedup_id}"


def test_acquired_runs_once_and_records_the_result(client: onceq.Client, queue: str) -> None:
    enq = client.enqueue(queue, {"order": 7}, dedup_id="order-7")
    calls: List[str] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, concurrency=2)
    @onceq.effectively_once(ttl_ms=30_000)
    def charge(job: onceq.RunningJob) -> dict:
        calls.append(job.id)
        return {"charged": job.payload["order"]}

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 1, 10), worker.stats
    assert calls == [enq.id]
    begin = client.idempotency_begin(key_of(queue, "order-7"), "someone-else", 1000)
    assert (begin.state, begin.result) == ("completed", {"charged": 7})
    with pytest.raises(onceq.NotFound):
        client.job_get(enq.id)


def test_completed_acks_without_running(client: onceq.Client, queue: str) -> None:
    key = key_of(queue, "order-8")
    assert client.idempotency_begin(key, "earlier-worker", 30_000).state == "acquired"
    client.idempotency_complete(key, "earlier-worker", {"charged": 8}, 60_000)
    enq = client.enqueue(queue, {"order": 8}, dedup_id="order-8")
    calls: List[str] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue)
    @onceq.effectively_once
    def charge(job: onceq.RunningJob) -> None:
        calls.append(job.id)

    with running(worker):
        assert wait_for(lambda: worker.stats.acked == 1, 10), worker.stats
    assert calls == []
    assert worker.stats.duplicates == 1
    with pytest.raises(onceq.NotFound):
        client.job_get(enq.id)


def test_held_elsewhere_releases_the_job_until_the_key_is_free(client: onceq.Client, queue: str) -> None:
    key = key_of(queue, "order-9")
    assert client.idempotency_begin(key, "other-worker", 60_000).state == "acquired"
    enq = client.enqueue(queue, {"order": 9}, dedup_id="order-9")
    calls: List[int] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue, wait_ms=100)
    @onceq.effectively_once(retry_delay_ms=200)
    async def charge(job: onceq.RunningJob) -> str:
        calls.append(job.attempt)
        return "ok"

    with running(worker):
        assert wait_for(lambda: worker.stats.released >= 2, 10), worker.stats
        assert calls == []
        job = client.job_get(enq.id)
        assert job.attempt <= 1 and job.errors == []  # releases spend no attempt
        client.idempotency_release(key, "other-worker")
        assert wait_for(lambda: worker.stats.acked == 1, 10), worker.stats
    assert calls == [1]
    assert client.idempotency_begin(key, "x", 1000).result == "ok"


def test_a_raising_handler_gives_its_key_back(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, max_attempts=1)
    enq = client.enqueue(queue, {"order": 10}, dedup_id="order-10")
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue)
    @onceq.effectively_once
    def charge(job: onceq.RunningJob) -> None:
        raise RuntimeError("card declined")

    with running(worker):
        assert wait_for(lambda: worker.stats.nacked == 1, 10), worker.stats
    assert client.job_get(enq.id).state == "dead"
    # Released: the next begin acquires, rather than finding it in progress.
    assert client.idempotency_begin(key_of(queue, "order-10"), "next", 1000).state == "acquired"


def test_the_key_is_the_rust_workers() -> None:
    leased = onceq.LeasedJob(id="5", queue="pay", lease_token="0" * 32, attempt=1, max_attempts=5, priority=0,
                             payload=None, headers={}, dedup_id=None, enqueued_at="", run_at="",
                             lease_expires_at="")
    assert default_key(onceq.RunningJob(leased)) == "onceq:pay:#5"
    leased.dedup_id = "order-1"
    assert default_key(onceq.RunningJob(leased)) == "onceq:pay:order-1"
    leased.dedup_id = "x" * 300
    assert default_key(onceq.RunningJob(leased)) == \
        "onceq:pay:~" + __import__("hashlib").sha256(b"x" * 300).hexdigest()


def test_a_deadline_past_the_claim_is_refused(client: onceq.Client, queue: str) -> None:
    worker = onceq.Worker(client)

    @worker.task(queue, deadline_ms=5000)
    @onceq.effectively_once(ttl_ms=5000)
    def charge(job: onceq.RunningJob) -> None:
        pass

    import asyncio
    with pytest.raises(ValueError, match="deadline_ms"):
        asyncio.run(worker.run_async())
    with pytest.raises(ValueError, match="ttl_ms"):
        onceq.effectively_once(ttl_ms=0)


def test_a_refused_begin_spends_an_attempt_without_running(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, max_attempts=1)
    enq = client.enqueue(queue, 1, dedup_id="d-1")
    calls: List[str] = []
    worker = onceq.Worker(client, shutdown_timeout=2)

    @worker.task(queue)
    @onceq.effectively_once(key=lambda job: "k" * 300)  # past the store's 256-byte key limit
    def handle(job: onceq.RunningJob) -> None:
        calls.append(job.id)

    with running(worker):
        assert wait_for(lambda: worker.stats.nacked == 1, 10), worker.stats
    assert calls == []
    dead = client.job_get(enq.id)
    assert dead.state == "dead" and dead.errors[0].error.startswith("idempotency begin refused: invalid_request")
