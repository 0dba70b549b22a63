"""The clients against a real server: every area of the API answers through its typed result,
and every error class comes from its API code (with RateLimited's retry_after)."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import tomllib
from pathlib import Path

import pytest

import onceq
from conftest import REPO


def test_queue_lifecycle_and_payloads(client: onceq.Client, queue: str) -> None:
    config = client.queue_put(queue, max_attempts=3, backoff={"initial_ms": 500})
    assert (config.max_attempts, config.backoff.initial_ms, config.delivery) == (3, 500, "at_least_once")
    assert config.durability is None and "durability" not in config.to_json()
    assert client.queue_put(queue, durability="relaxed").durability == "relaxed"
    assert client.queue_get(queue).config.durability == "relaxed"
    assert client.queue_put(queue, durability=None).durability is None
    client.enqueue(queue, {"to": "ada"}, headers={"trace": "t1"}, priority=5)
    client.enqueue(queue, payload_bytes=b"\xff\x00\x10")
    assert any(q.name == queue for q in client.queue_list())
    client.queue_pause(queue)
    assert client.queue_get(queue).paused and client.lease(queue) == []
    client.queue_resume(queue)
    jobs = client.lease(queue, 10)
    assert [j.payload for j in jobs] == [{"to": "ada"}, None]
    assert jobs[0].headers == {"trace": "t1"} and jobs[0].body == b'{"to":"ada"}'
    assert jobs[1].payload_base64 == base64.b64encode(b"\xff\x00\x10").decode() and jobs[1].body == b"\xff\x00\x10"
    assert [r.ok for r in client.acks(jobs)] == [True, True]
    assert client.queue_get(queue).advice == []
    client.queue_delete(queue)
    with pytest.raises(onceq.NotFound) as e:
        client.queue_get(queue)
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_idempotency_key_header_dedups(client: onceq.Client, queue: str) -> None:
    a = client.enqueue(queue, 1, idempotency_key="signup-42")
    b = client.enqueue(queue, 1, idempotency_key="signup-42")
    assert (a.duplicate, b.duplicate, b.id) == (False, True, a.id)


def test_unique_jobs(client: onceq.Client, queue: str) -> None:
    pending = onceq.unique("payload", "pending")
    first = client.enqueue(queue, {"day": "2026-12-07", "kind": "sales"}, unique=pending)
    assert not first.duplicate
    again = client.enqueue(queue, {"kind": "sales", "day": "2026-12-07"}, unique=pending)
    assert (again.id, again.duplicate) == (first.id, True)
    assert onceq.unique("payload", "window", 60_000) == {"by": "payload", "while": "window", "window_ms": 60_000}
    [leased] = client.lease(queue)
    assert leased.id == first.id
    assert not client.enqueue(queue, {"day": "2026-12-07", "kind": "sales"}, unique=pending).duplicate
    with pytest.raises(onceq.BadRequest, match="unique.while"):
        client.enqueue(queue, 1, unique=onceq.unique("payload", "running"))
    with pytest.raises(onceq.BadRequest, match="dedup_id"):
        client.enqueue(queue, 1, unique=onceq.unique("dedup_id", "active"))


def test_errors_by_code(client: onceq.Client, queue: str) -> None:
    client.enqueue(queue, 1)
    [job] = client.lease(queue)
    client.release(job.id, job.lease_token)
    with pytest.raises(onceq.LeaseLost) as lost:
        client.ack(job.id, job.lease_token)
    assert lost.value.status == 409 and isinstance(lost.value, onceq.Conflict)
    with pytest.raises(onceq.BadRequest) as bad:
        client.queue_put(queue, max_attempts=0)
    assert bad.value.status == 400 and "max_attempts" in bad.value.message
    with pytest.raises(onceq.BadRequest):
        client.queue_put(queue, no_such_field=1)
    with pytest.raises(onceq.NotFound):
        client.job_get("999999999")
    with pytest.raises(ValueError, match="job id"):
        client.job_get("042")
    with pytest.raises(ValueError, match="1 to 1000"):
        client.enqueue_many(queue, [])
    with pytest.raises(onceq.PayloadTooLarge):
        client.enqueue(queue, "x" * (1024 * 1024 + 10))
    key = f"{queue}.k"
    client.idempotency_begin(key, "a", 10_000)
    with pytest.raises(onceq.Conflict):
        client.idempotency_complete(key, "b", 1, 1000)


def test_cancel_ends_a_waiting_job_and_marks_a_leased_one(client: onceq.Client, queue: str) -> None:
    waiting = client.enqueue(queue, {"n": 1}, delay_ms=60_000)
    cancelled = client.cancel(waiting.id)
    assert (cancelled.state, cancelled.cancelled_at is not None) == ("cancelled", True)
    assert client.cancel(waiting.id).cancelled_at == cancelled.cancelled_at
    client.enqueue(queue, {"n": 2})
    [job] = client.lease(queue, visibility_timeout_ms=30_000)
    marked = client.cancel(job.id)
    assert (marked.state, marked.cancelled_at is not None) == ("leased", True)
    with pytest.raises(onceq.JobCancelled) as e:
        client.extend(job.id, job.lease_token, 30_000)
    assert e.value.status == 409 and isinstance(e.value, onceq.Conflict)
    client.release(job.id, job.lease_token)
    assert client.job_get(job.id).state == "cancelled"
    assert client.queue_get(queue).stats.cancelled == 2
    with pytest.raises(onceq.NotFound):
        client.cancel("999999999")


def test_kill_and_delete_act_on_a_job_that_is_not_leased(client: onceq.Client, queue: str) -> None:
    waiting = client.enqueue(queue, {"n": 1}, delay_ms=60_000)
    killed = client.kill(waiting.id, "bad data")
    assert (killed.state, killed.errors[-1].error) == ("dead", "bad data")
    assert len(client.kill(waiting.id).errors) == 1
    client.delete(waiting.id)
    with pytest.raises(onceq.NotFound):
        client.job_get(waiting.id)
    with pytest.raises(onceq.NotFound):
        client.delete(waiting.id)
    client.enqueue(queue, {"n": 2})
    [job] = client.lease(queue, visibility_timeout_ms=30_000)
    with pytest.raises(onceq.Conflict):
        client.kill(job.id)
    with pytest.raises(onceq.Conflict):
        client.delete(job.id)
    client.ack(job.id, job.lease_token)


def test_rate_limited_carries_retry_after(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, max_depth=1)
    client.enqueue(queue, 1)
    with pytest.raises(onceq.RateLimited) as e:
        client.enqueue(queue, 2)
    assert (e.value.status, e.value.retry_after_ms, e.value.retry_after) == (429, 1000, 1.0)


def test_no_server_is_unavailable() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with onceq.Client(f"http://127.0.0.1:{port}", timeout=2) as c:
        with pytest.raises(onceq.Unavailable) as e:
            c.health()
    assert e.value.status is None
    with pytest.raises(ValueError, match="http://"):
        onceq.Client("localhost:7700")


def test_dead_letters_batch_settles_and_extend(client: onceq.Client, queue: str) -> None:
    client.enqueue_many(queue, [onceq.job(i) for i in range(3)])
    jobs = client.lease(queue, 3, visibility_timeout_ms=5000)
    assert client.extend(jobs[0].id, jobs[0].lease_token, 60_000).endswith("Z")
    [ext] = client.extends(jobs[:1], 60_000)
    assert ext.ok and ext.lease_expires_at
    assert [r.outcome for r in client.nacks(jobs[1:2], delay_ms=60_000, error="later")] == ["retrying"]
    assert [r.ok for r in client.fails(jobs[2:], error="poison")] == [True]
    page = client.dead_list(queue)
    assert [j.id for j in page.jobs] == [jobs[2].id] and page.jobs[0].errors[0].error == "poison"
    assert client.dead_redrive(queue, ids=[jobs[2].id]) == onceq.RedriveResult(matched=1, redriven=1, last=jobs[2].id)
    assert client.dead_purge(queue) == 0
    [rel] = client.releases(jobs[:1])
    assert rel.ok


def test_groups_commits_producers(client: onceq.Client, queue: str) -> None:
    client.queue_put(queue, ordering="per_key", partitions=4)
    client.enqueue_many(queue, [onceq.job({"o": 1}, ordering_key="a"), onceq.job({"o": 2}, ordering_key="b")])
    member = client.group_join(queue, "billing", name="py", session_timeout_ms=30_000)
    assert member.partitions == [0, 1, 2, 3] and len(member.member_id) == 32
    jobs = client.lease(queue, 10, group="billing", member_id=member.member_id)
    assert sorted(j.ordering_key or "" for j in jobs) == ["a", "b"]
    assert client.group_heartbeat(queue, "billing", member.member_id).member_id == member.member_id
    info = client.group_get(queue, "billing")
    assert info.group == "billing" and len(info.partitions) == 4
    assert [g.group for g in client.group_list(queue)] == ["billing"]
    out = f"{queue}-out"
    outcome = client.commit(commit_id=f"c-{queue}", ack=jobs, enqueue={out: [onceq.job({"next": 1})]})
    assert outcome.replayed is False and outcome.enqueued[0].queue == out
    again = client.commit(commit_id=f"c-{queue}", ack=jobs, enqueue={out: [onceq.job({"next": 1})]})
    assert again.replayed is True and again.enqueued[0].jobs[0].id == outcome.enqueued[0].jobs[0].id
    client.group_leave(queue, "billing", member.member_id)
    with pytest.raises(onceq.NotMember):
        client.group_heartbeat(queue, "billing", member.member_id)
    producer = f"ingest-{secrets.token_hex(4)}"
    first = client.producer_register(producer)
    second = client.producer_register(producer)
    assert second.epoch == first.epoch + 1 and client.producer_get(producer).epoch == second.epoch
    with pytest.raises(onceq.Fenced):
        client.commit(producer={"id": producer, "epoch": first.epoch}, enqueue={out: [onceq.job(1)]})


def test_schedules_and_operations(client: onceq.Client, queue: str) -> None:
    name = f"s-{secrets.token_hex(4)}"
    s = client.schedule_put(name, queue, "0 6 * * 1-5", timezone="Europe/Berlin", payload={"k": 1})
    assert (s.name, s.queue, s.timezone, s.paused, len(s.next_ticks)) == (name, queue, "Europe/Berlin", False, 5)
    client.schedule_pause(name)
    assert client.schedule_get(name).paused
    client.schedule_resume(name)
    assert name in [x.name for x in client.schedule_list()]
    assert client.schedule_tick().skipped >= 0
    client.schedule_delete(name)
    with pytest.raises(onceq.NotFound):
        client.schedule_get(name)
    with pytest.raises(onceq.BadRequest, match="cron"):
        client.schedule_put(name, queue, "not a cron")
    client.health()
    client.ready()
    assert "onceq_" in client.metrics()


def test_async_client_matches(server, queue: str) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with onceq.AsyncClient(server.url) as c:
            await c.enqueue(queue, {"a": 1}, dedup_id="d")
            assert (await c.enqueue(queue, {"a": 1}, dedup_id="d")).duplicate
            [job] = await c.lease(queue, 5)
            with pytest.raises(onceq.LeaseLost):
                await c.extend(job.id, "0" * 32, 1000)
            await c.ack(job.id, job.lease_token)
            with pytest.raises(onceq.NotFound):
                await c.ack(job.id, job.lease_token)
    asyncio.run(go())


def test_the_version_is_the_workspace_version() -> None:
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    pyproject = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())
    assert pyproject["project"]["version"] == cargo["workspace"]["package"]["version"] == onceq.__version__


def test_the_lease_adviser_names_a_lease_held_too_long(client: onceq.Client, queue: str) -> None:
    # Held 1.7 s of a 2 s lease: 85%, above the adviser's 80%.
    client.queue_put(queue, visibility_timeout_ms=2000)
    for i in range(5):
        client.enqueue(queue, i)
    jobs = client.lease(queue, 5)
    time.sleep(1.7)
    assert [r.ok for r in client.acks(jobs)] == [True] * 5
    advice = client.queue_get(queue).advice
    assert [a.kind for a in advice] == ["lease_timeout"], advice
    assert "duplicate deliveries" in advice[0].message
