"""onceq: the Python client of the onceq job queue.

Layout:

- ``client``: `Client` (blocking) and `AsyncClient` (asyncio), the whole HTTP API of docs/api.md;
- ``types``: the typed results (dataclasses);
- ``errors``: one exception per API error code (`LeaseLost`, `NotFound`, `RateLimited`...);
- ``worker``: `Worker`, handlers per queue with concurrency, batched leases and acks,
  heartbeats, deadlines, retries and graceful shutdown; `effectively_once` for handlers whose
  effect must happen once;
- ``outbox``: `stage`, the transactional outbox row that ``onceq relay`` publishes.
"""

from . import outbox
from ._requests import job, unique
from .client import AsyncClient, Client
from .errors import (BadRequest, Conflict, Corrupt, Fenced, Forbidden, JobCancelled, LeaseLost, NotFound, NotMember, OnceqError,
                     PayloadTooLarge, QueueNotEmpty, RateLimited, RequestTimeout, Unauthorized, Unavailable,
                     UnsupportedMediaType)
from .types import (Advice, Begin, CommitOutcome, DeadPage, Enqueued, GroupInfo, Job, LeasedJob, MemberView, PacedRedrive,
                    Producer, QueueConfig, QueueInfo, QueueStats, RedriveFilter, RedriveResult, Schedule, SettleResult,
                    TickReport)
from .worker import EffectivelyOnce, FailJob, RetryLater, RunningJob, Worker, WorkerStats, effectively_once

__version__ = "0.1.0"

__all__ = [
    "Advice", "AsyncClient", "BadRequest", "Begin", "Client", "CommitOutcome", "Conflict", "Corrupt", "DeadPage",
    "EffectivelyOnce", "Enqueued", "FailJob", "Fenced", "Forbidden", "GroupInfo", "Job", "JobCancelled", "LeaseLost", "LeasedJob",
    "MemberView", "NotFound", "NotMember", "OnceqError", "PacedRedrive", "PayloadTooLarge", "Producer",
    "QueueConfig", "QueueInfo", "QueueNotEmpty", "QueueStats", "RateLimited", "RedriveFilter", "RedriveResult",
    "RequestTimeout", "RetryLater", "RunningJob", "Schedule", "SettleResult", "TickReport", "Unauthorized",
    "Unavailable", "UnsupportedMediaType", "Worker", "WorkerStats", "effectively_once", "job", "outbox", "unique",
]
