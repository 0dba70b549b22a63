"""Filtered and paced redrives through both clients against a real server: a dry run counts what
the filters match and moves nothing, a redrive goes on from `last` and into another queue, and a
paced redrive is started, listed, stepped to its end or stopped; an unknown one is NotFound."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import List

import pytest

import onceq


def _dead(client: onceq.Client, queue: str, errors: List[str]) -> List[str]:
    """Enqueues one job per error and fails each with it: their ids, dead, in order."""
    ids = [e.id for e in client.enqueue_many(queue, [onceq.job(i) for i in range(len(errors))])]
    jobs = client.lease(queue, len(errors))
    assert [j.id for j in jobs] == ids
    assert all(r.ok for r in client.fails([{"id": j.id, "lease_token": j.lease_token, "error": e}
                                           for j, e in zip(jobs, errors)]))
    return ids


def test_filters_dry_run_steps_and_another_queue(client: onceq.Client, queue: str) -> None:
    ids = _dead(client, queue, ["timeout: smtp", "bad body", "timeout: dns", "timeout: smtp"])
    timeouts = [ids[0], ids[2], ids[3]]
    dry = client.dead_redrive(queue, error_contains="timeout", dry_run=True)
    assert dry == onceq.RedriveResult(matched=3, redriven=0, last=None)
    assert [j.id for j in client.dead_list(queue).jobs] == ids
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    assert client.dead_redrive(queue, dead_after=past, min_attempts=1, dry_run=True).matched == 4
    assert client.dead_redrive(queue, dead_after=datetime.now(timezone.utc) + timedelta(hours=1),
                               dry_run=True).matched == 0
    assert client.dead_redrive(queue, min_attempts=2, dry_run=True).matched == 0

    first = client.dead_redrive(queue, error_contains="timeout", limit=2)
    assert first == onceq.RedriveResult(matched=3, redriven=2, last=timeouts[1])
    rest = client.dead_redrive(queue, error_contains="timeout", after=first.last)
    assert rest == onceq.RedriveResult(matched=1, redriven=1, last=timeouts[2])
    assert [j.id for j in client.lease(queue, 10)] == timeouts

    other = f"{queue}-fixed"
    client.queue_put(other)
    moved = client.dead_redrive(queue, to_queue=other)
    assert moved == onceq.RedriveResult(matched=1, redriven=1, last=ids[1])
    [job] = client.lease(other, 10)
    assert (job.id, job.queue, job.attempt, job.payload) == (ids[1], other, 1, 1)
    assert client.dead_list(queue).jobs == []

    with pytest.raises(onceq.BadRequest, match="dead_"):
        client.dead_redrive(queue, dead_after=past, dead_before=past - timedelta(minutes=1))
    with pytest.raises(onceq.NotFound):
        client.dead_redrive(queue, to_queue=f"{queue}-missing")
    with pytest.raises(ValueError, match="aware datetime"):
        client.dead_redrive(queue, dead_after=datetime.now())
    with pytest.raises(ValueError, match="at most 1000 ids"):
        client.dead_redrive(queue, ids=[str(i + 1) for i in range(1001)])


def test_paced_redrive_started_listed_stepped_and_stopped(client: onceq.Client, queue: str) -> None:
    ids = _dead(client, queue, ["down"] * 3)
    slow = client.redrive_start(queue, 1, error_contains="down")
    assert (slow.queue, slow.rate_per_second, slow.state, slow.matched, slow.finished_at, slow.error) == (
        queue, 1, "running", 3, None, None)
    assert slow.filter.error_contains == "down" and slow.filter.dead_before is not None
    assert client.redrive_get(slow.id).id == slow.id
    listed = {p.id: p for p in client.redrive_list()}
    assert listed[slow.id].state == "running" and listed[slow.id].filter == slow.filter
    stopped = client.redrive_stop(slow.id)
    assert stopped.state == "stopped" and stopped.finished_at is not None and stopped.redriven <= 1
    assert client.redrive_stop(slow.id) == stopped
    left = len(client.dead_list(queue).jobs)
    assert left == 3 - stopped.redriven

    # At 10,000 a second, a step moves all that is left at once: the store's own step (every
    # 100 ms) or a tick; tick until it is done, within a bound.
    fast = client.redrive_start(queue, 10_000)
    assert (fast.state, fast.matched) == ("running", left)
    deadline = time.monotonic() + 3
    while (now := client.redrive_get(fast.id)).state == "running" and time.monotonic() < deadline:
        assert client.redrive_tick() >= 0
        time.sleep(0.02)
    assert (now.state, now.redriven, now.cursor, now.error) == ("done", left, ids[-1], None)
    assert now.finished_at is not None and client.dead_list(queue).jobs == []
    assert sorted(j.id for j in client.lease(queue, 10)) == ids

    with pytest.raises(onceq.NotFound) as missing:
        client.redrive_get("999999999")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(onceq.NotFound):
        client.redrive_stop("999999999")
    with pytest.raises(ValueError, match="decimal"):
        client.redrive_get("first")
    with pytest.raises(ValueError, match="rate_per_second"):
        client.redrive_start(queue, 10_001)


def test_async_client_redrives(server, client: onceq.Client, queue: str) -> None:  # type: ignore[no-untyped-def]
    ids = _dead(client, queue, ["a", "b"])

    async def go() -> None:
        async with onceq.AsyncClient(server.url) as c:
            assert await c.dead_redrive(queue, error_contains="b", dry_run=True) == onceq.RedriveResult(1, 0, None)
            paced = await c.redrive_start(queue, 1, ids=[ids[0]])
            assert paced.filter.ids == [ids[0]] and paced.matched == 1
            assert paced.id in [p.id for p in await c.redrive_list()]
            assert (await c.redrive_get(paced.id)).queue == queue
            assert (await c.redrive_stop(paced.id)).state in ("stopped", "done")
            assert await c.redrive_tick() >= 0
            with pytest.raises(onceq.NotFound):
                await c.redrive_get("999999999")
            assert await c.dead_redrive(queue, ids=[ids[1]]) == onceq.RedriveResult(1, 1, ids[1])
    asyncio.run(go())
