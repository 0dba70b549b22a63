"""`Client` (blocking) and `AsyncClient` (asyncio): the whole onceq HTTP API over httpx.

Both send the same requests (built in ``_requests``) and return the same typed results
(``onceq.types``); an error answer raises the `onceq.errors` class of its API code, and no
answer at all (refused, reset, timed out) raises `onceq.Unavailable` with ``status`` ``None``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import httpx

from . import _requests as r
from . import types as t
from .errors import OnceqError, Unavailable, error_from_response

#: Seconds a request may take (a lease's ``wait_ms`` is added); the server cuts a request at 60 s.
TIMEOUT_DEFAULT = 30.0
#: Seconds to open a connection.
CONNECT_TIMEOUT_DEFAULT = 5.0
#: Queues read per page by `Client.queue_list` (the API's largest page).
QUEUE_PAGE_MAX = 1000

Settle = Union[t.LeasedJob, Mapping[str, Any]]
"""A batch settle item: a `LeasedJob` (its id and token), or the item as the API takes it."""

_UNSET: Any = object()


def _item(item: Settle, **extra: Any) -> Dict[str, Any]:
    if isinstance(item, t.LeasedJob):
        out: Dict[str, Any] = {"id": item.id, "lease_token": item.lease_token}
    else:
        out = dict(item)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


class _Base:
    def __init__(self, base_url: str, token: Optional[str], timeout: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._headers = {"content-type": "application/json", "accept": "application/json",
                         "user-agent": "onceq-python"}
        if token is not None:
            self._headers["authorization"] = f"Bearer {token}"

    def _prepare(self, req: r.Request, wait_ms: Optional[int] = None) -> Dict[str, Any]:
        headers = dict(req.headers or {})
        timeout = self.timeout + (wait_ms or 0) / 1000.0
        kwargs: Dict[str, Any] = {"headers": headers, "params": req.params or None,
                                  "timeout": httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_DEFAULT)}
        if req.body is not None:
            kwargs["content"] = r.encode(req.body)
        return kwargs

    @staticmethod
    def _read(req: r.Request, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers.get("retry-after"))
        if req.parse is r._none or not response.content:
            return req.parse(None)
        return req.parse(json.loads(response.content))


def _unavailable(req: r.Request, e: Exception) -> OnceqError:
    return Unavailable(f"no answer from onceq to {req.method} {req.path}: {type(e).__name__}: {e}")


class Client(_Base):
    """A blocking client of `onceq serve`.

    ``Client("http://127.0.0.1:7700", token=None)``; use it as a context manager, or `close` it.
    Safe to share between threads (httpx's connection pool).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:7700", *, token: Optional[str] = None,
                 timeout: float = TIMEOUT_DEFAULT, max_connections: int = 100) -> None:
        super().__init__(base_url, token, timeout)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, limits=limits)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def _send(self, req: r.Request, wait_ms: Optional[int] = None) -> Any:
        try:
            response = self._http.request(req.method, req.path, **self._prepare(req, wait_ms))
        except httpx.HTTPError as e:
            raise _unavailable(req, e) from e
        return self._read(req, response)

    # Operations.
    def health(self) -> None:
        """``GET /healthz``: the process is up (raises otherwise)."""
        self._send(r.healthz())

    def ready(self) -> None:
        """``GET /readyz``: the store answers; raises `Unavailable` when it does not."""
        self._send(r.readyz())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text."""
        try:
            response = self._http.get("/metrics")
        except httpx.HTTPError as e:
            raise Unavailable(f"no answer from onceq to GET /metrics: {e}") from e
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.text

    # Queues.
    def queue_put(self, queue: str, **config: Any) -> t.QueueConfig:
        """Creates or configures a queue: the fields given replace the queue's (docs/api.md)."""
        return self._send(r.queue_put(queue, config))

    def queue_get(self, queue: str) -> t.QueueInfo:
        """A queue's config, paused flag and stats."""
        return self._send(r.queue_get(queue))

    def queue_list(self) -> List[t.QueueInfo]:
        """Every queue (the token may read), by name, reading every page."""
        out: List[t.QueueInfo] = []
        after: Optional[str] = None
        while True:
            page = self._send(r.queue_list_page(after, QUEUE_PAGE_MAX))
            out.extend(t.QueueInfo.from_json(q) for q in page["queues"])
            after = page.get("next")
            if after is None:
                return out

    def queue_delete(self, queue: str) -> None:
        """Deletes a queue with all its jobs and dedup ids."""
        self._send(r.queue_delete(queue))

    def queue_pause(self, queue: str) -> None:
        """Stops leasing from a queue (enqueues still land)."""
        self._send(r.queue_pause(queue))

    def queue_resume(self, queue: str) -> None:
        """Resumes leasing from a paused queue."""
        self._send(r.queue_resume(queue))

    # Jobs.
    def enqueue(self, queue: str, payload: Any = None, *, idempotency_key: Optional[str] = None,
                **options: Any) -> t.Enqueued:
        """Enqueues one job; ``options`` are `onceq.job`'s (``dedup_id``, ``delay_ms``, ...)."""
        return self._send(r.enqueue(queue, [r.job(payload, **options)], idempotency_key=idempotency_key))[0]

    def enqueue_many(self, queue: str, jobs: Iterable[r.JobSpec], *,
                     producer: Optional[Mapping[str, Any]] = None) -> List[t.Enqueued]:
        """Enqueues 1 to 1000 jobs (see `onceq.job`) atomically: all or none."""
        return self._send(r.enqueue(queue, jobs, producer=producer))

    def lease(self, queue: str, max_jobs: int = 1, *, visibility_timeout_ms: Optional[int] = None,
              wait_ms: Optional[int] = None, group: Optional[str] = None,
              member_id: Optional[str] = None) -> List[t.LeasedJob]:
        """Leases up to ``max_jobs`` ready jobs; ``wait_ms`` long-polls (at most 20,000)."""
        return self._send(r.lease(queue, max_jobs=max_jobs, visibility_timeout_ms=visibility_timeout_ms,
                                  wait_ms=wait_ms, group=group, member_id=member_id), wait_ms)

    def job_get(self, id: Union[str, int]) -> t.Job:
        """A job by id (`NotFound` once acked, purged or never enqueued)."""
        return self._send(r.job_get(id))

    def cancel(self, id: Union[str, int]) -> t.Job:
        """Cancels a job: one that is not leased ends ``cancelled`` at once; a leased one is marked,
        its worker's next heartbeat stops the handler, and it ends cancelled unless acked. A dead
        job is `Conflict`. Returns the job after the cancel; safe to retry."""
        return self._send(r.job_cancel(id))

    def kill(self, id: Union[str, int], error: Optional[str] = None) -> t.Job:
        """Fails a job that is not leased, now: it goes dead whatever attempts it has left, with
        ``error`` recorded (the server's "failed by an operator" when None). A leased or cancelled
        job is `Conflict`; a dead one is returned as it is. Needs ``admin``; safe to retry."""
        return self._send(r.job_kill(id, error))

    def delete(self, id: Union[str, int]) -> None:
        """Deletes a job that is not leased, with its error history. A leased job is `Conflict`;
        a job that is gone is `NotFound` (so a delete whose reply was lost is not retried blindly).
        Needs ``admin``."""
        self._send(r.job_delete(id))

    def ack(self, id: Union[str, int], lease_token: str) -> None:
        """The job is done: deleted, never delivered again."""
        self._send(r.ack(id, lease_token))

    def nack(self, id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None,
             error: Optional[str] = None) -> None:
        """Retry later: after ``delay_ms``, or the queue's backoff; dead once attempts are spent."""
        self._send(r.nack(id, lease_token, delay_ms=delay_ms, error=error))

    def extend(self, id: Union[str, int], lease_token: str, visibility_timeout_ms: int) -> str:
        """Keeps the lease ``visibility_timeout_ms`` from now; returns the new expiry."""
        return self._send(r.extend(id, lease_token, visibility_timeout_ms))

    def fail(self, id: Union[str, int], lease_token: str, error: str) -> None:
        """Gives up now: the job is dead-lettered with ``error``."""
        self._send(r.fail(id, lease_token, error))

    def release(self, id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None) -> None:
        """Gives the lease back without spending an attempt."""
        self._send(r.release(id, lease_token, delay_ms=delay_ms))

    def acks(self, items: Sequence[Settle]) -> List[t.SettleResult]:
        """Acks 1 to 1000 leases in one call; each item's result on its own."""
        return self._send(r.batch("acks", [_item(i) for i in items]))

    def nacks(self, items: Sequence[Settle], *, delay_ms: Optional[int] = None,
              error: Optional[str] = None) -> List[t.SettleResult]:
        """Nacks 1 to 1000 leases; ``delay_ms`` and ``error`` apply to items that name none."""
        return self._send(r.batch("nacks", [_item(i, **_defaults(i, delay_ms=delay_ms, error=error)) for i in items]))

    def extends(self, items: Sequence[Settle], visibility_timeout_ms: Optional[int] = None) -> List[t.SettleResult]:
        """Extends 1 to 1000 leases (``visibility_timeout_ms`` for items that name none)."""
        return self._send(r.batch("extends", [_item(i, **_defaults(i, visibility_timeout_ms=visibility_timeout_ms))
                                              for i in items]))

    def fails(self, items: Sequence[Settle], error: Optional[str] = None) -> List[t.SettleResult]:
        """Fails 1 to 1000 leases (``error`` for items that name none)."""
        return self._send(r.batch("fails", [_item(i, **_defaults(i, error=error)) for i in items]))

    def releases(self, items: Sequence[Settle], *, delay_ms: Optional[int] = None) -> List[t.SettleResult]:
        """Releases 1 to 1000 leases without spending their attempts."""
        return self._send(r.batch("releases", [_item(i, **_defaults(i, delay_ms=delay_ms)) for i in items]))

    # Dead letters.
    def dead_list(self, queue: str, *, limit: Optional[int] = None,
                  after: Optional[Union[str, int]] = None) -> t.DeadPage:
        """A page of a queue's dead jobs in id order."""
        return self._send(r.dead_list(queue, limit=limit, after=after))

    def dead_redrive(self, queue: str, *, ids: Optional[Sequence[Union[str, int]]] = None,
                     limit: Optional[int] = None, error_contains: Optional[str] = None,
                     dead_after: Union[str, datetime, None] = None, dead_before: Union[str, datetime, None] = None,
                     min_attempts: Optional[int] = None, after: Optional[Union[str, int]] = None,
                     to_queue: Optional[str] = None, dry_run: Optional[bool] = None) -> t.RedriveResult:
        """Makes dead jobs ready again, now: every one, or those that pass all the filters given.

        ``ids`` (at most 1000), ``limit`` (oldest id first), ``error_contains`` (in the error they
        died of), ``dead_after`` / ``dead_before`` (RFC 3339 strings or aware datetimes),
        ``min_attempts``, ``after`` (a job id: pass the previous result's ``last``), ``to_queue``
        (into another existing queue), ``dry_run`` (count, move none). Returns matched, redriven
        and last (`RedriveResult`).
        """
        return self._send(r.dead_redrive(queue, ids=ids, limit=limit, error_contains=error_contains,
                                         dead_after=dead_after, dead_before=dead_before, min_attempts=min_attempts,
                                         after=after, to_queue=to_queue, dry_run=dry_run))

    def dead_purge(self, queue: str) -> int:
        """Deletes every dead job of the queue; returns how many."""
        return self._send(r.dead_purge(queue))

    # Paced redrives.
    def redrive_start(self, queue: str, rate_per_second: int, *, ids: Optional[Sequence[Union[str, int]]] = None,
                      limit: Optional[int] = None, error_contains: Optional[str] = None,
                      dead_after: Union[str, datetime, None] = None, dead_before: Union[str, datetime, None] = None,
                      min_attempts: Optional[int] = None, to_queue: Optional[str] = None) -> t.PacedRedrive:
        """Starts a paced redrive: the server moves the matching dead jobs in the background,
        ``rate_per_second`` (1 to 10,000) at a time, oldest id first, and keeps going across restarts.

        Takes the filters of `dead_redrive` but ``after`` and ``dry_run``; only jobs dead by now are
        taken. `Conflict` when 100 paced redrives already run.
        """
        return self._send(r.redrive_start(queue, rate_per_second, ids=ids, limit=limit, error_contains=error_contains,
                                          dead_after=dead_after, dead_before=dead_before, min_attempts=min_attempts,
                                          to_queue=to_queue))

    def redrive_get(self, id: Union[str, int]) -> t.PacedRedrive:
        """One paced redrive; `NotFound` when there is none."""
        return self._send(r.redrive_get(id))

    def redrive_list(self) -> List[t.PacedRedrive]:
        """The paced redrives on queues the token administers: running first, then newest first."""
        return self._send(r.redrive_list())

    def redrive_stop(self, id: Union[str, int]) -> t.PacedRedrive:
        """Stops a paced redrive (what it moved stays moved); one already ended is returned as it is."""
        return self._send(r.redrive_stop(id))

    def redrive_tick(self) -> int:
        """Steps every running paced redrive now (the server does every 100 ms); returns the jobs moved."""
        return self._send(r.redrive_tick())

    # Idempotency.
    def idempotency_begin(self, key: str, owner: str, ttl_ms: int, fingerprint: Optional[str] = None) -> t.Begin:
        """Claims ``key`` for ``owner``: acquired, in_progress (held elsewhere) or completed."""
        return self._send(r.idempotency_begin(key, owner, ttl_ms, fingerprint))

    def idempotency_complete(self, key: str, owner: str, result: Any, retention_ms: int) -> None:
        """Records the effect's ``result`` (any JSON) under the key held by ``owner``."""
        self._send(r.idempotency_complete(key, owner, result, retention_ms))

    def idempotency_release(self, key: str, owner: str) -> None:
        """Gives the key up without a result (the effect was not applied)."""
        self._send(r.idempotency_release(key, owner))

    # Consumer groups.
    def group_join(self, queue: str, group: str, *, name: Optional[str] = None,
                   session_timeout_ms: Optional[int] = None) -> t.MemberView:
        """Joins a consumer group of a ``per_key`` queue."""
        return self._send(r.group_join(queue, group, name=name, session_timeout_ms=session_timeout_ms))

    def group_heartbeat(self, queue: str, group: str, member_id: str) -> t.MemberView:
        """Refreshes the member's session; `NotMember` when it is gone."""
        return self._send(r.group_heartbeat(queue, group, member_id))

    def group_leave(self, queue: str, group: str, member_id: str) -> None:
        """Leaves the group at once."""
        self._send(r.group_leave(queue, group, member_id))

    def group_get(self, queue: str, group: str) -> t.GroupInfo:
        """A group's members and partitions."""
        return self._send(r.group_get(queue, group))

    def group_list(self, queue: str) -> List[t.GroupInfo]:
        """Every group of the queue that ever had members."""
        return self._send(r.group_list(queue))

    # Commits, producers.
    def commit(self, *, commit_id: Optional[str] = None, producer: Optional[Mapping[str, Any]] = None,
               ack: Optional[Sequence[Settle]] = None, nack: Optional[Sequence[Settle]] = None,
               fail: Optional[Sequence[Settle]] = None, release: Optional[Sequence[Settle]] = None,
               enqueue: Optional[Mapping[str, Sequence[r.JobSpec]]] = None,
               checkpoint: Any = _UNSET) -> t.CommitOutcome:
        """Settles leases and enqueues jobs all or nothing (``enqueue``: queue name to jobs)."""
        return self._send(_commit(commit_id, producer, ack, nack, fail, release, enqueue, checkpoint))

    def producer_register(self, id: str) -> t.Producer:
        """Registers the producer again: a new epoch that fences the older ones."""
        return self._send(r.producer_register(id))

    def producer_get(self, id: str) -> t.Producer:
        """A producer's epoch and checkpoint, without registering."""
        return self._send(r.producer_get(id))

    # Schedules.
    def schedule_put(self, name: str, queue: str, cron: str, **options: Any) -> t.Schedule:
        """Creates or replaces a schedule (``timezone``, ``payload``, ``job``, ``catch_up``, ``paused``)."""
        return self._send(r.schedule_put(name, queue, cron, **options))

    def schedule_get(self, name: str) -> t.Schedule:
        """A schedule with its next ticks."""
        return self._send(r.schedule_get(name))

    def schedule_list(self) -> List[t.Schedule]:
        """Every schedule (the token may read), by name."""
        return self._send(r.schedule_list())

    def schedule_delete(self, name: str) -> None:
        """Deletes a schedule (its jobs stay)."""
        self._send(r.schedule_delete(name))

    def schedule_pause(self, name: str) -> None:
        """Pauses a schedule."""
        self._send(r.schedule_pause(name))

    def schedule_resume(self, name: str) -> None:
        """Resumes a schedule from its first tick after now."""
        self._send(r.schedule_resume(name))

    def schedule_tick(self) -> t.TickReport:
        """Fires every due tick now (the server does it by itself every second)."""
        return self._send(r.schedule_tick())


class AsyncClient(_Base):
    """The asyncio twin of `Client`: the same methods, as coroutines."""

    def __init__(self, base_url: str = "http://127.0.0.1:7700", *, token: Optional[str] = None,
                 timeout: float = TIMEOUT_DEFAULT, max_connections: int = 100) -> None:
        super().__init__(base_url, token, timeout)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def _send(self, req: r.Request, wait_ms: Optional[int] = None) -> Any:
        try:
            response = await self._http.request(req.method, req.path, **self._prepare(req, wait_ms))
        except httpx.HTTPError as e:
            raise _unavailable(req, e) from e
        return self._read(req, response)

    async def health(self) -> None:
        await self._send(r.healthz())

    async def ready(self) -> None:
        await self._send(r.readyz())

    async def metrics(self) -> str:
        try:
            response = await self._http.get("/metrics")
        except httpx.HTTPError as e:
            raise Unavailable(f"no answer from onceq to GET /metrics: {e}") from e
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.text

    async def queue_put(self, queue: str, **config: Any) -> t.QueueConfig:
        return await self._send(r.queue_put(queue, config))

    async def queue_get(self, queue: str) -> t.QueueInfo:
        return await self._send(r.queue_get(queue))

    async def queue_list(self) -> List[t.QueueInfo]:
        out: List[t.QueueInfo] = []
        after: Optional[str] = None
        while True:
            page = await self._send(r.queue_list_page(after, QUEUE_PAGE_MAX))
            out.extend(t.QueueInfo.from_json(q) for q in page["queues"])
            after = page.get("next")
            if after is None:
                return out

    async def queue_delete(self, queue: str) -> None:
        await self._send(r.queue_delete(queue))

    async def queue_pause(self, queue: str) -> None:
        await self._send(r.queue_pause(queue))

    async def queue_resume(self, queue: str) -> None:
        await self._send(r.queue_resume(queue))

    async def enqueue(self, queue: str, payload: Any = None, *, idempotency_key: Optional[str] = None,
                      **options: Any) -> t.Enqueued:
        return (await self._send(r.enqueue(queue, [r.job(payload, **options)], idempotency_key=idempotency_key)))[0]

    async def enqueue_many(self, queue: str, jobs: Iterable[r.JobSpec], *,
                           producer: Optional[Mapping[str, Any]] = None) -> List[t.Enqueued]:
        return await self._send(r.enqueue(queue, jobs, producer=producer))

    async def lease(self, queue: str, max_jobs: int = 1, *, visibility_timeout_ms: Optional[int] = None,
                    wait_ms: Optional[int] = None, group: Optional[str] = None,
                    member_id: Optional[str] = None) -> List[t.LeasedJob]:
        return await self._send(r.lease(queue, max_jobs=max_jobs, visibility_timeout_ms=visibility_timeout_ms,
                                        wait_ms=wait_ms, group=group, member_id=member_id), wait_ms)

    async def job_get(self, id: Union[str, int]) -> t.Job:
        return await self._send(r.job_get(id))

    async def cancel(self, id: Union[str, int]) -> t.Job:
        return await self._send(r.job_cancel(id))

    async def kill(self, id: Union[str, int], error: Optional[str] = None) -> t.Job:
        return await self._send(r.job_kill(id, error))

    async def delete(self, id: Union[str, int]) -> None:
        await self._send(r.job_delete(id))

    async def ack(self, id: Union[str, int], lease_token: str) -> None:
        await self._send(r.ack(id, lease_token))

    async def nack(self, id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None,
                   error: Optional[str] = None) -> None:
        await self._send(r.nack(id, lease_token, delay_ms=delay_ms, error=error))

    async def extend(self, id: Union[str, int], lease_token: str, visibility_timeout_ms: int) -> str:
        return await self._send(r.extend(id, lease_token, visibility_timeout_ms))

    async def fail(self, id: Union[str, int], lease_token: str, error: str) -> None:
        await self._send(r.fail(id, lease_token, error))

    async def release(self, id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None) -> None:
        await self._send(r.release(id, lease_token, delay_ms=delay_ms))

    async def acks(self, items: Sequence[Settle]) -> List[t.SettleResult]:
        return await self._send(r.batch("acks", [_item(i) for i in items]))

    async def nacks(self, items: Sequence[Settle], *, delay_ms: Optional[int] = None,
                    error: Optional[str] = None) -> List[t.SettleResult]:
        return await self._send(r.batch("nacks", [_item(i, **_defaults(i, delay_ms=delay_ms, error=error))
                                                  for i in items]))

    async def extends(self, items: Sequence[Settle], visibility_timeout_ms: Optional[int] = None) -> List[t.SettleResult]:
        return await self._send(r.batch("extends", [
            _item(i, **_defaults(i, visibility_timeout_ms=visibility_timeout_ms)) for i in items]))

    async def fails(self, items: Sequence[Settle], error: Optional[str] = None) -> List[t.SettleResult]:
        return await self._send(r.batch("fails", [_item(i, **_defaults(i, error=error)) for i in items]))

    async def releases(self, items: Sequence[Settle], *, delay_ms: Optional[int] = None) -> List[t.SettleResult]:
        return await self._send(r.batch("releases", [_item(i, **_defaults(i, delay_ms=delay_ms)) for i in items]))

    async def dead_list(self, queue: str, *, limit: Optional[int] = None,
                        after: Optional[Union[str, int]] = None) -> t.DeadPage:
        return await self._send(r.dead_list(queue, limit=limit, after=after))

    async def dead_redrive(self, queue: str, *, ids: Optional[Sequence[Union[str, int]]] = None,
                           limit: Optional[int] = None, error_contains: Optional[str] = None,
                           dead_after: Union[str, datetime, None] = None, dead_before: Union[str, datetime, None] = None,
                           min_attempts: Optional[int] = None, after: Optional[Union[str, int]] = None,
                           to_queue: Optional[str] = None, dry_run: Optional[bool] = None) -> t.RedriveResult:
        return await self._send(r.dead_redrive(queue, ids=ids, limit=limit, error_contains=error_contains,
                                               dead_after=dead_after, dead_before=dead_before,
                                               min_attempts=min_attempts, after=after, to_queue=to_queue,
                                               dry_run=dry_run))

    async def dead_purge(self, queue: str) -> int:
        return await self._send(r.dead_purge(queue))

    async def redrive_start(self, queue: str, rate_per_second: int, *, ids: Optional[Sequence[Union[str, int]]] = None,
                            limit: Optional[int] = None, error_contains: Optional[str] = None,
                            dead_after: Union[str, datetime, None] = None, dead_before: Union[str, datetime, None] = None,
                            min_attempts: Optional[int] = None, to_queue: Optional[str] = None) -> t.PacedRedrive:
        return await self._send(r.redrive_start(queue, rate_per_second, ids=ids, limit=limit,
                                                error_contains=error_contains, dead_after=dead_after,
                                                dead_before=dead_before, min_attempts=min_attempts, to_queue=to_queue))

    async def redrive_get(self, id: Union[str, int]) -> t.PacedRedrive:
        return await self._send(r.redrive_get(id))

    async def redrive_list(self) -> List[t.PacedRedrive]:
        return await self._send(r.redrive_list())

    async def redrive_stop(self, id: Union[str, int]) -> t.PacedRedrive:
        return await self._send(r.redrive_stop(id))

    async def redrive_tick(self) -> int:
        return await self._send(r.redrive_tick())

    async def idempotency_begin(self, key: str, owner: str, ttl_ms: int,
                                fingerprint: Optional[str] = None) -> t.Begin:
        return await self._send(r.idempotency_begin(key, owner, ttl_ms, fingerprint))

    async def idempotency_complete(self, key: str, owner: str, result: Any, retention_ms: int) -> None:
        await self._send(r.idempotency_complete(key, owner, result, retention_ms))

    async def idempotency_release(self, key: str, owner: str) -> None:
        await self._send(r.idempotency_release(key, owner))

    async def group_join(self, queue: str, group: str, *, name: Optional[str] = None,
                         session_timeout_ms: Optional[int] = None) -> t.MemberView:
        return await self._send(r.group_join(queue, group, name=name, session_timeout_ms=session_timeout_ms))

    async def group_heartbeat(self, queue: str, group: str, member_id: str) -> t.MemberView:
        return await self._send(r.group_heartbeat(queue, group, member_id))

    async def group_leave(self, queue: str, group: str, member_id: str) -> None:
        await self._send(r.group_leave(queue, group, member_id))

    async def group_get(self, queue: str, group: str) -> t.GroupInfo:
        return await self._send(r.group_get(queue, group))

    async def group_list(self, queue: str) -> List[t.GroupInfo]:
        return await self._send(r.group_list(queue))

    async def commit(self, *, commit_id: Optional[str] = None, producer: Optional[Mapping[str, Any]] = None,
                     ack: Optional[Sequence[Settle]] = None, nack: Optional[Sequence[Settle]] = None,
                     fail: Optional[Sequence[Settle]] = None, release: Optional[Sequence[Settle]] = None,
                     enqueue: Optional[Mapping[str, Sequence[r.JobSpec]]] = None,
                     checkpoint: Any = _UNSET) -> t.CommitOutcome:
        return await self._send(_commit(commit_id, producer, ack, nack, fail, release, enqueue, checkpoint))

    async def producer_register(self, id: str) -> t.Producer:
        return await self._send(r.producer_register(id))

    async def producer_get(self, id: str) -> t.Producer:
        return await self._send(r.producer_get(id))

    async def schedule_put(self, name: str, queue: str, cron: str, **options: Any) -> t.Schedule:
        return await self._send(r.schedule_put(name, queue, cron, **options))

    async def schedule_get(self, name: str) -> t.Schedule:
        return await self._send(r.schedule_get(name))

    async def schedule_list(self) -> List[t.Schedule]:
        return await self._send(r.schedule_list())

    async def schedule_delete(self, name: str) -> None:
        await self._send(r.schedule_delete(name))

    async def schedule_pause(self, name: str) -> None:
        await self._send(r.schedule_pause(name))

    async def schedule_resume(self, name: str) -> None:
        await self._send(r.schedule_resume(name))

    async def schedule_tick(self) -> t.TickReport:
        return await self._send(r.schedule_tick())


def _defaults(item: Settle, **defaults: Any) -> Dict[str, Any]:
    """The defaults an item does not name itself."""
    named = item if isinstance(item, Mapping) else {}
    return {k: v for k, v in defaults.items() if k not in named}


def _commit(commit_id: Optional[str], producer: Optional[Mapping[str, Any]], ack: Optional[Sequence[Settle]],
            nack: Optional[Sequence[Settle]], fail: Optional[Sequence[Settle]], release: Optional[Sequence[Settle]],
            enqueue: Optional[Mapping[str, Sequence[r.JobSpec]]], checkpoint: Any) -> r.Request:
    def items(xs: Optional[Sequence[Settle]]) -> Optional[List[Dict[str, Any]]]:
        return [_item(x) for x in xs] if xs else None

    return r.commit(commit_id=commit_id, producer=producer, ack=items(ack), nack=items(nack), fail=items(fail),
                    release=items(release), enqueue=enqueue,
                    checkpoint=None if checkpoint is _UNSET else checkpoint, has_checkpoint=checkpoint is not _UNSET)
