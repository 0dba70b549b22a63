"""`Worker`: runs handlers for the jobs of onceq queues.

    worker = Worker(Client("http://127.0.0.1:7700"))

    @worker.task("emails", concurrency=20, deadline_ms=10_000)
    def send(job):
        mailer.send(job.payload["to"])

    worker.run()  # until SIGTERM or SIGINT

Per task (one queue), the worker:

- leases in batches (up to ``concurrency + prefetch`` jobs per call, long polls of
  ``wait_ms``), keeps at most ``prefetch`` jobs leased but not started, and runs at most
  ``concurrency`` handlers at once;
- acks in batches (``POST /v1/acks``, up to ``ack_batch_max`` leases, after at most
  ``ack_linger_ms``), for every task of the worker together;
- heartbeats every ``heartbeat_interval_ms``: one ``POST /v1/extends`` for every lease it holds.
  A lease the server refuses to extend (``lease_lost`` or ``not_found``: expired, or leased
  again; ``job_cancelled``: an operator cancelled the job) **cancels** its handler: an ``async def`` handler's task is
  cancelled; a plain ``def`` handler, run in a thread, sees ``job.cancelled`` set and should
  stop (a thread cannot be stopped from outside). An `effectively_once` handler is only told (``job.cancelled``): once
  it holds its key, a cancel could not tell whether its effect happened, so it runs to its end
  and its key is completed or released as usual. An item answered otherwise (``unavailable``)
  is a heartbeat that got no answer: the handler keeps running, and the next beat tries again.
  A handler cancelled for a lost lease settles nothing: its lease is gone. One cancelled for
  ``job_cancelled`` gives its lease back (a release), which ends the job cancelled at once;
- gives a handler ``deadline_ms``: past it the handler is cancelled the same way and the job
  nacked (``"deadline exceeded"``), so it retries with the queue's backoff;
- on an exception, nacks the job without a delay, so the queue's backoff decides when it runs
  again (`RetryLater` names a delay; `FailJob` dead-letters it at once);
- on SIGTERM or SIGINT (`run`), or `stop`: leases no more, releases the jobs leased but not
  started (they do not spend an attempt), lets running handlers finish for ``shutdown_timeout``
  seconds, then cancels and releases the rest, flushes the acks, and returns.

`effectively_once` marks a handler whose effect must happen once, over the server's idempotency
store (docs/api.md, "Idempotency store").
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import inspect
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, TypeVar, Union

from .client import AsyncClient, Client
from .errors import OnceqError
from .types import LeasedJob

log = logging.getLogger("onceq.worker")

F = TypeVar("F", bound=Callable[..., Any])

#: Longest error text the worker sends with a nack; the server cuts at 4096 bytes anyway.
ERROR_TEXT_CHARS_MAX = 2000
#: How long a failed batch ack, release or heartbeat call waits before it is tried again, in seconds.
SETTLE_RETRY_PAUSE = 0.2
#: The item error codes of a heartbeat that mean the handler must stop: the lease is gone, or
#: the job was cancelled (any other, such as ``unavailable``, is no answer: the handler keeps
#: running).
LEASE_GONE_CODES = ("lease_lost", "not_found")
#: Tries of a batch ack or release call that gets no answer before the worker gives up on it (the
#: leases then expire and the jobs run again).
SETTLE_TRIES_MAX = 5


class RetryLater(Exception):
    """Raise from a handler to nack its job with this delay (``None``: the queue's backoff)."""

    def __init__(self, delay_ms: Optional[int] = None, reason: str = "retry later") -> None:
        super().__init__(reason)
        self.delay_ms = delay_ms
        self.reason = reason


class FailJob(Exception):
    """Raise from a handler to dead-letter its job at once, with ``reason`` as its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunningJob:
    """A leased job as its handler sees it: the leased job's fields, and ``cancelled``."""

    def __init__(self, leased: LeasedJob) -> None:
        self.leased = leased
        #: Set when the handler must stop: its lease was lost, its deadline passed, or shutdown
        #: ran out of time. Plain ``def`` handlers check it (``job.cancelled.is_set()``).
        self.cancelled = threading.Event()
        #: Why ``cancelled`` was set: ``"lease_lost"``, ``"cancelled"`` (an operator cancelled the
        #: job), ``"deadline"`` or ``"shutdown"``.
        self.cancel_reason: Optional[str] = None

    id = property(lambda self: self.leased.id)
    queue = property(lambda self: self.leased.queue)
    payload = property(lambda self: self.leased.payload)
    body = property(lambda self: self.leased.body)
    headers = property(lambda self: self.leased.headers)
    attempt = property(lambda self: self.leased.attempt)
    max_attempts = property(lambda self: self.leased.max_attempts)
    dedup_id = property(lambda self: self.leased.dedup_id)
    ordering_key = property(lambda self: self.leased.ordering_key)
    lease_token = property(lambda self: self.leased.lease_token)

    def __repr__(self) -> str:
        return f"RunningJob(id={self.id!r}, queue={self.queue!r}, attempt={self.attempt})"


@dataclass
class EffectivelyOnce:
    """The options of an `effectively_once` handler."""

    ttl_ms: int
    retention_ms: int
    retry_delay_ms: int
    key: Callable[[RunningJob], str]


#: The prefix of the keys `default_key` makes: the Rust worker's (``onceq_worker::gate``), so
#: that Python and Rust workers of one queue find each other's recorded effects.
KEY_PREFIX = "onceq:"
#: Longest idempotency key the server takes, in bytes.
KEY_LEN_MAX = 256


def default_key(job: RunningJob) -> str:
    """The key guarding a job's effect, as the Rust worker derives it: ``onceq:<queue>:<dedup id>``;
    ``onceq:<queue>:~<SHA-256 of the dedup id>`` when that would pass 256 bytes; and
    ``onceq:<queue>:#<job id>`` for a job without a dedup id."""
    if job.dedup_id is None:
        return f"{KEY_PREFIX}{job.queue}:#{job.id}"
    key = f"{KEY_PREFIX}{job.queue}:{job.dedup_id}"
    if len(key.encode("utf-8")) <= KEY_LEN_MAX:
        return key
    return f"{KEY_PREFIX}{job.queue}:~{hashlib.sha256(job.dedup_id.encode('utf-8')).hexdigest()}"


def claim_owner(worker_owner: str, job: RunningJob) -> str:
    """The owner of one delivery's claim on its key: the worker and the lease token, as the Rust
    worker's ``claim_owner``. One per delivery, so that a second delivery of the job to the same
    worker (its first lease expired while the handler ran) finds the key in progress instead of
    acquiring it again."""
    return f"{worker_owner}/{job.lease_token}"


def effectively_once(fn: Optional[F] = None, *, ttl_ms: int = 60_000, retention_ms: int = 86_400_000,
                     retry_delay_ms: int = 1000, key: Callable[[RunningJob], str] = default_key) -> Any:
    """Marks a handler whose effect must happen once, whatever redeliveries happen.

    Before running it, the worker begins the job's idempotency key (``key(job)``; by default
    `default_key`: the queue and the job's dedup id) as the delivery's owner (`claim_owner`), for ``ttl_ms``:

    - **completed**: the effect was applied by an earlier delivery. The handler does not run;
      the job is acked. (The recorded result is the handler's return value then.)
    - **in_progress**: another worker holds the key. The job is released (no attempt spent)
      to run again after ``retry_delay_ms``.
    - **acquired**: the handler runs; its return value (JSON, at most 1 MiB) is recorded with
      ``complete`` for ``retention_ms``, then the job is acked. If the handler raises or is
      cancelled, the key is released (the effect did not happen) and the job nacked.

    The task's ``deadline_ms`` must be below ``ttl_ms``, so the claim outlives the handler
    (the worker refuses to start otherwise); without one it is set to half of ``ttl_ms``.
    Usable bare (``@effectively_once``) or with options.
    """
    for name, value, low, high in (("ttl_ms", ttl_ms, 1, 86_400_000), ("retention_ms", retention_ms, 1, 2_592_000_000),
                                   ("retry_delay_ms", retry_delay_ms, 0, 31_536_000_000)):
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"effectively_once: {name} must be an integer from {low} to {high}, got {value!r}")
    options = EffectivelyOnce(ttl_ms=ttl_ms, retention_ms=retention_ms, retry_delay_ms=retry_delay_ms, key=key)

    def mark(f: F) -> F:
        f.__onceq_effectively_once__ = options  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


@dataclass
class Task:
    """A registered handler and its knobs (see `Worker.task`)."""

    queue: str
    handler: Callable[..., Any]
    concurrency: int
    prefetch: int
    visibility_timeout_ms: int
    heartbeat_interval_ms: int
    deadline_ms: Optional[int]
    wait_ms: int
    # Runtime state: jobs leased and not started, and the running ones by job id.
    buffer: Deque[RunningJob] = field(default_factory=collections.deque)
    running: Dict[str, "_Run"] = field(default_factory=dict)
    wake: Optional[asyncio.Event] = None

    @property
    def once(self) -> Optional[EffectivelyOnce]:
        return getattr(self.handler, "__onceq_effectively_once__", None)


@dataclass
class _Run:
    job: RunningJob
    future: "Optional[asyncio.Future[Any]]" = None
    lost: bool = False
    # Set once an effectively-once delivery acquired its key: from then on it is only told to
    # stop (``job.cancelled``), never cancelled, because a cancel could not tell whether the
    # effect had happened, and would release the key for a redelivery to apply it again.
    guarded: bool = False


@dataclass
class WorkerStats:
    """What the worker did since it started; read it at any time."""

    leased: int = 0
    succeeded: int = 0
    acked: int = 0
    nacked: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    #: Jobs an operator cancelled while this worker held them (their handlers were stopped and
    #: their leases given back, which ends them cancelled).
    cancelled: int = 0
    deadline_exceeded: int = 0
    duplicates: int = 0
    ack_refused: int = 0


class Worker:
    """Runs the handlers registered with `task` (see the module docs).

    ``client`` is a `Client` (the worker opens an `AsyncClient` to the same server, and closes
    it) or an `AsyncClient` (used as is, on the loop that runs `run_async`).
    """

    def __init__(self, client: Union[Client, AsyncClient], *, ack_batch_max: int = 1000, ack_linger_ms: int = 2,
                 shutdown_timeout: float = 30.0, threads: Optional[int] = None, owner: Optional[str] = None) -> None:
        if not 1 <= ack_batch_max <= 1000:
            raise ValueError(f"ack_batch_max must be 1 to 1000 (the API's batch limit), got {ack_batch_max}")
        if ack_linger_ms < 0:
            raise ValueError(f"ack_linger_ms must be 0 or more, got {ack_linger_ms}")
        if shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be 0 or more seconds, got {shutdown_timeout}")
        self._given = client
        self.ack_batch_max = ack_batch_max
        self.ack_linger_ms = ack_linger_ms
        self.shutdown_timeout = shutdown_timeout
        self.threads = threads
        #: The worker's name in the owners of its idempotency claims (`claim_owner`: one per delivery).
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.tasks: Dict[str, Task] = {}
        self.stats = WorkerStats()
        self._stopping: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._acks: List[RunningJob] = []
        self._ack_wake: Optional[asyncio.Event] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._client: Optional[AsyncClient] = None
        self._stop_requested = False

    def task(self, queue: str, *, concurrency: int = 10, prefetch: Optional[int] = None,
             visibility_timeout_ms: int = 30_000, heartbeat_interval_ms: Optional[int] = None,
             deadline_ms: Optional[int] = None, wait_ms: int = 1000) -> Callable[[F], F]:
        """Registers the decorated function as the handler of ``queue``'s jobs.

        - ``concurrency``: most handlers running at once (1 to 10,000);
        - ``prefetch``: most jobs leased but not started (default: ``concurrency``); a lease asks
          for up to ``concurrency + prefetch`` jobs (at most 1000);
        - ``visibility_timeout_ms``: each lease's length (the heartbeat keeps extending it);
        - ``heartbeat_interval_ms``: how often leases are extended (default a third of the lease);
        - ``deadline_ms``: most time one handler may take (default: none);
        - ``wait_ms``: long poll of a lease that finds nothing (0 to 20,000; it also bounds how
          long a shutdown waits for the leasing call in flight).

        The handler takes one `RunningJob`; ``async def`` handlers run on the worker's loop,
        plain ones in its threads. Its return value is ignored, unless it is `effectively_once`.
        """
        if queue in self.tasks:
            raise ValueError(f"queue {queue!r} already has a handler")
        if not 1 <= concurrency <= 10_000:
            raise ValueError(f"concurrency must be 1 to 10000, got {concurrency}")
        prefetch = concurrency if prefetch is None else prefetch
        if prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more, got {prefetch}")
        if not 1 <= visibility_timeout_ms <= 43_200_000:
            raise ValueError(f"visibility_timeout_ms must be 1 to 43200000, got {visibility_timeout_ms}")
        heartbeat = heartbeat_interval_ms if heartbeat_interval_ms is not None else max(1, visibility_timeout_ms // 3)
        if not 1 <= heartbeat < visibility_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms must be 1 to below visibility_timeout_ms "
                             f"({visibility_timeout_ms}), got {heartbeat}")
        if deadline_ms is not None and deadline_ms < 1:
            raise ValueError(f"deadline_ms must be 1 or more, got {deadline_ms}")
        if not 0 <= wait_ms <= 20_000:
            raise ValueError(f"wait_ms must be 0 to 20000, got {wait_ms}")

        def register(fn: F) -> F:
            self.tasks[queue] = Task(queue=queue, handler=fn, concurrency=concurrency, prefetch=prefetch,
                                     visibility_timeout_ms=visibility_timeout_ms, heartbeat_interval_ms=heartbeat,
                                     deadline_ms=deadline_ms, wait_ms=wait_ms)
            return fn

        return register

    # Running.

    def run(self) -> None:
        """Runs until SIGTERM or SIGINT (or `stop`), then shuts down gracefully."""
        asyncio.run(self.run_async(handle_signals=True))

    def stop(self) -> None:
        """Starts a graceful shutdown; safe from any thread, a signal handler, or before start."""
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            return  # not started: run_async returns at once when it starts
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:
            pass  # the loop already closed: nothing to stop

    async def run_async(self, handle_signals: bool = False) -> None:
        """Runs on the current loop until `stop` (or, with ``handle_signals``, SIGTERM/SIGINT)."""
        if not self.tasks:
            raise ValueError("the worker has no task: register a handler with @worker.task(queue)")
        for task in self.tasks.values():
            once = task.once
            if once is not None:
                if task.deadline_ms is None:
                    task.deadline_ms = max(1, once.ttl_ms // 2)
                if task.deadline_ms >= once.ttl_ms:
                    raise ValueError(
                        f"queue {task.queue!r}: deadline_ms ({task.deadline_ms}) must be below the effectively_once "
                        f"ttl_ms ({once.ttl_ms}): a handler that outlives its claim could run twice")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._ack_wake = asyncio.Event()
        own_client = not isinstance(self._given, AsyncClient)
        if isinstance(self._given, AsyncClient):
            self._client = self._given
        else:
            self._client = AsyncClient(self._given.base_url, token=self._given.token, timeout=self._given.timeout)
        threads = self.threads or sum(t.concurrency for t in self.tasks.values()
                                      if not inspect.iscoroutinefunction(t.handler)) or 1
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onceq-worker")
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        for task in self.tasks.values():
            task.wake = asyncio.Event()
        acker = asyncio.create_task(self._ack_loop(), name="onceq-acks")
        loops = [asyncio.create_task(self._lease_loop(t), name=f"onceq-lease-{t.queue}") for t in self.tasks.values()]
        beats = [asyncio.create_task(self._heartbeat_loop(t), name=f"onceq-heartbeat-{t.queue}")
                 for t in self.tasks.values()]
        try:
            await self._stopping.wait()
            log.info("onceq worker %s: shutting down", self.owner)
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
        finally:
            for b in beats:
                b.cancel()
            await asyncio.gather(*beats, return_exceptions=True)
            self._ack_wake.set()
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            await self._flush_acks()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False)
            if own_client:
                await self._client.aclose()

    async def _shutdown(self) -> None:
        assert self._client is not None
        unstarted = [job for t in self.tasks.values() for job in t.buffer]
        for t in self.tasks.values():
            t.buffer.clear()
        await self._release(unstarted)
        running = [r for t in self.tasks.values() for r in t.running.values() if r.future is not None]
        if running:
            _, pending = await asyncio.wait([r.future for r in running if r.future is not None],
                                            timeout=self.shutdown_timeout)
            if pending:
                late = [r for r in running if r.future in pending]
                log.warning("onceq worker: %d handlers still running after %.1f s; cancelling them and releasing "
                            "their jobs", len(late), self.shutdown_timeout)
                for r in late:
                    self._cancel(r, "shutdown")
                await asyncio.wait(list(pending), timeout=1.0)

    def _cancel(self, run: _Run, reason: str) -> None:
        run.job.cancel_reason = run.job.cancel_reason or reason
        run.job.cancelled.set()
        if run.guarded:
            # Whatever the handler did is completed or released by the delivery itself.
            return
        if run.future is not None and not run.future.done():
            run.future.cancel()

    async def _lease_loop(self, task: Task) -> None:
        assert self._client is not None and self._stopping is not None and task.wake is not None
        pause = 0.05
        while not self._stopping.is_set():
            room = task.concurrency + task.prefetch - len(task.buffer) - len(task.running)
            if room <= 0:
                task.wake.clear()
                waiter = asyncio.create_task(task.wake.wait())
                stopper = asyncio.create_task(self._stopping.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            try:
                leased = await self._client.lease(task.queue, min(room, 1000),
                                                  visibility_timeout_ms=task.visibility_timeout_ms,
                                                  wait_ms=task.wait_ms)
                pause = 0.05
            except OnceqError as e:
                log.warning("onceq worker: leasing from %s failed: %s; trying again in %.2f s", task.queue, e, pause)
                try:
                    await asyncio.wait_for(self._stopping.wait(), pause)
                except asyncio.TimeoutError:
                    pass
                pause = min(pause * 2, 5.0)
                continue
            self.stats.leased += len(leased)
            task.buffer.extend(RunningJob(j) for j in leased)
            self._start_ready(task)

    def _start_ready(self, task: Task) -> None:
        if self._stopping is not None and self._stopping.is_set():
            return
        while task.buffer and len(task.running) < task.concurrency:
            job = task.buffer.popleft()
            run = _Run(job)
            task.running[job.id] = run
            run.future = asyncio.ensure_future(self._run(task, run))

    async def _run(self, task: Task, run: _Run) -> None:
        try:
            once = task.once
            if once is None:
                await self._run_plain(task, run)
            else:
                await self._run_once(task, run, once)
        except asyncio.CancelledError:
            # Shutdown ran out of time (or the lease was lost): give the lease back when it is ours.
            if not run.lost:
                await self._release([run.job])
        except Exception:  # noqa: BLE001 - the worker must outlive any fault of one job
            log.exception("onceq worker: job %s of %s: settling failed", run.job.id, task.queue)
        finally:
            task.running.pop(run.job.id, None)
            self._start_ready(task)
            if task.wake is not None:
                task.wake.set()

    async def _call_handler(self, task: Task, job: RunningJob) -> Any:
        """Runs the handler under its deadline; raises `asyncio.TimeoutError` past it."""
        timeout = task.deadline_ms / 1000.0 if task.deadline_ms is not None else None
        if inspect.iscoroutinefunction(task.handler):
            if timeout is None:
                # A cancel of this coroutine (lease lost, shutdown) reaches the handler as is.
                return await task.handler(job)
            inner = asyncio.ensure_future(task.handler(job))
            try:
                done, _ = await asyncio.wait({inner}, timeout=timeout)
            except asyncio.CancelledError:
                inner.cancel()
                raise
            if not done:
                # Tell the handler why before it sees the cancel.
                job.cancel_reason = job.cancel_reason or "deadline"
                job.cancelled.set()
                inner.cancel()
                await asyncio.wait({inner})
                raise asyncio.TimeoutError
            return inner.result()
        assert self._loop is not None
        future = self._loop.run_in_executor(self._executor, task.handler, job)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            # The thread cannot be stopped: tell it, and stop waiting for it.
            job.cancel_reason = job.cancel_reason or "deadline"
            job.cancelled.set()
            raise

    async def _run_plain(self, task: Task, run: _Run) -> None:
        """Runs the handler and settles the job by its outcome."""
        job = run.job
        try:
            await self._call_handler(task, job)
        except asyncio.TimeoutError:
            self.stats.deadline_exceeded += 1
            await self._nack(job, None, f"deadline exceeded: the handler ran past {task.deadline_ms} ms")
            return
        except asyncio.CancelledError:
            if run.lost:
                return
            raise
        except RetryLater as e:
            await self._nack(job, e.delay_ms, e.reason)
            return
        except FailJob as e:
            await self._fail(job, e.reason)
            return
        except Exception as e:  # noqa: BLE001 - a handler's exception is a failed attempt
            await self._nack(job, None, _error_text(e))
            return
        self.stats.succeeded += 1
        self._ack(job)

    async def _run_once(self, task: Task, run: _Run, once: EffectivelyOnce) -> None:
        assert self._client is not None
        job = run.job
        key = once.key(job)
        owner = claim_owner(self.owner, job)
        try:
            begin = await self._client.idempotency_begin(key, owner, once.ttl_ms)
        except OnceqError as e:
            if e.status is None or e.status >= 500:
                # The store did not answer: give the job back without spending an attempt.
                log.warning("onceq worker: begin of key %s failed (%s); releasing job %s", key, e, job.id)
                await self._release([job], delay_ms=once.retry_delay_ms)
            else:
                # Refused (a fingerprint conflict, a key too long...): an attempt, so it is bounded.
                await self._nack(job, None, f"idempotency begin refused: {e}")
            return
        if begin.state == "completed":
            self.stats.duplicates += 1
            self._ack(job)
            return
        if begin.state == "in_progress":
            await self._release([job], delay_ms=once.retry_delay_ms)
            return
        run.guarded = True
        try:
            result = await self._call_handler(task, job)
        except asyncio.TimeoutError:
            self.stats.deadline_exceeded += 1
            await self._give_up_key(key, owner)
            await self._nack(job, None, f"deadline exceeded: the handler ran past {task.deadline_ms} ms")
            return
        except asyncio.CancelledError:
            await self._give_up_key(key, owner)
            if run.lost:
                return
            raise
        except RetryLater as e:
            await self._give_up_key(key, owner)
            await self._nack(job, e.delay_ms, e.reason)
            return
        except FailJob as e:
            await self._give_up_key(key, owner)
            await self._fail(job, e.reason)
            return
        except Exception as e:  # noqa: BLE001
            await self._give_up_key(key, owner)
            await self._nack(job, None, _error_text(e))
            return
        # The effect happened: record it before the ack, so a redelivery finds it completed, even
        # when the lease was lost meanwhile.
        recorded = await self._with_retries(
            "idempotency complete", lambda: self._client.idempotency_complete(  # type: ignore[union-attr]
                key, owner, result, once.retention_ms))
        if recorded is None:
            # Not recorded: no ack, so the job runs again once its lease and the claim expire.
            log.error("onceq worker: the effect of job %s happened but its key %s could not be completed", job.id, key)
            return
        self.stats.succeeded += 1
        self._ack(job)

    async def _give_up_key(self, key: str, owner: str) -> None:
        assert self._client is not None
        try:
            await self._client.idempotency_release(key, owner)
        except OnceqError as e:
            # Held by nobody else or expired: the claim ends by its ttl anyway.
            log.warning("onceq worker: releasing idempotency key %s failed: %s", key, e)

    # Settling.

    def _ack(self, job: RunningJob) -> None:
        assert self._ack_wake is not None
        self._acks.append(job)
        self._ack_wake.set()

    async def _ack_loop(self) -> None:
        assert self._ack_wake is not None
        while True:
            await self._ack_wake.wait()
            if len(self._acks) < self.ack_batch_max and self.ack_linger_ms > 0:
                await asyncio.sleep(self.ack_linger_ms / 1000.0)
            self._ack_wake.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks[:self.ack_batch_max], self._acks[self.ack_batch_max:]
            results = await self._with_retries("ack", lambda: self._client.acks([j.leased for j in batch]))  # type: ignore[union-attr]
            if results is None:
                continue
            for job, result in zip(batch, results):
                if result.ok:
                    self.stats.acked += 1
                else:
                    self.stats.ack_refused += 1
                    log.warning("onceq worker: ack of job %s refused (%s): its effect may run again",
                                job.id, result.error.code if result.error else "?")

    async def _release(self, jobs: List[RunningJob], delay_ms: Optional[int] = None) -> None:
        for start in range(0, len(jobs), 1000):
            chunk = jobs[start:start + 1000]
            results = await self._with_retries(
                "release", lambda: self._client.releases([j.leased for j in chunk], delay_ms=delay_ms))  # type: ignore[union-attr]
            if results is not None:
                self.stats.released += sum(1 for r in results if r.ok)

    async def _nack(self, job: RunningJob, delay_ms: Optional[int], error: str) -> None:
        assert self._client is not None
        try:
            await self._client.nack(job.id, job.lease_token, delay_ms=delay_ms, error=error)
            self.stats.nacked += 1
        except OnceqError as e:
            log.warning("onceq worker: nack of job %s failed (%s): its lease will expire and it runs again", job.id, e)

    async def _fail(self, job: RunningJob, reason: str) -> None:
        assert self._client is not None
        try:
            await self._client.fail(job.id, job.lease_token, reason)
            self.stats.failed += 1
        except OnceqError as e:
            log.warning("onceq worker: fail of job %s failed (%s): its lease will expire and it runs again", job.id, e)

    async def _with_retries(self, what: str, call: Callable[[], Any]) -> Any:
        """The call's result (``True`` for a call that returns nothing), or ``None`` when it
        failed for good: refused, or no answer ``SETTLE_TRIES_MAX`` times."""
        for attempt in range(1, SETTLE_TRIES_MAX + 1):
            try:
                result = await call()
                return True if result is None else result
            except OnceqError as e:
                if attempt == SETTLE_TRIES_MAX or e.status is not None and e.status < 500:
                    log.warning("onceq worker: batch %s failed for good (%s); those leases will expire", what, e)
                    return None
                await asyncio.sleep(SETTLE_RETRY_PAUSE * attempt)
        return None

    async def _heartbeat_loop(self, task: Task) -> None:
        assert self._client is not None
        while True:
            await asyncio.sleep(task.heartbeat_interval_ms / 1000.0)
            held: Dict[str, RunningJob] = {j.id: j for j in task.buffer}
            held.update({r.job.id: r.job for r in task.running.values()})
            jobs = list(held.values())
            for start in range(0, len(jobs), 1000):
                chunk = jobs[start:start + 1000]
                try:
                    results = await self._client.extends([j.leased for j in chunk], task.visibility_timeout_ms)
                except OnceqError as e:
                    log.warning("onceq worker: heartbeat of %d leases of %s failed: %s", len(chunk), task.queue, e)
                    continue
                for job, result in zip(chunk, results):
                    if result.ok:
                        continue
                    code = result.error.code if result.error else None
                    if code == "job_cancelled":
                        # Cancelled by an operator: the lease is still this worker's (a refused
                        # extend changes nothing). Stop the handler; its run gives the lease back,
                        # which ends the job cancelled at once rather than at the lease's expiry.
                        self.stats.cancelled += 1
                        log.info("onceq worker: job %s was cancelled: stopping its handler", job.id)
                        run = task.running.get(job.id)
                        if run is not None:
                            self._cancel(run, "cancelled")
                        elif job in task.buffer:
                            task.buffer.remove(job)
                            await self._release([job])
                        continue
                    if code not in LEASE_GONE_CODES:
                        # No definite answer for this lease (``unavailable``): as for a heartbeat
                        # that got no answer, the handler keeps running and the next beat tries again.
                        log.warning("onceq worker: heartbeat of job %s got no definite answer (%s)", job.id, code)
                        continue
                    # The lease is gone: whoever holds the job now, it is not this worker.
                    self.stats.lost += 1
                    log.warning("onceq worker: lease of job %s lost (%s): cancelling its handler", job.id,
                                result.error.code if result.error else "?")
                    run = task.running.get(job.id)
                    if run is not None:
                        run.lost = True
                        self._cancel(run, "lease_lost")
                    else:
                        try:
                            task.buffer.remove(job)
                        except ValueError:
                            pass


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text[:ERROR_TEXT_CHARS_MAX]


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Polls ``predicate`` until true or ``timeout`` seconds pass; for tests and tools."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
