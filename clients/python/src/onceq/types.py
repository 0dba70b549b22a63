"""Typed results of the onceq HTTP API (docs/api.md), as dataclasses.

Field names are the API's. Times stay the API's RFC 3339 strings (``2026-01-01T00:00:00.000Z``);
job ids are decimal strings. Every class reads its JSON with ``from_json`` and gives it back,
as the server sent it, with ``to_json`` (fields the API omits when empty are omitted again).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Type, TypeVar

T = TypeVar("T", bound="_Wire")

#: Fields the API sends only when present: omitted by ``to_json`` when ``None``.
_OPTIONAL = frozenset({
    "payload_base64", "ordering_key", "partition", "rate_limit", "rate_limit_by", "max_in_flight",
    "max_in_flight_per_key", "max_depth", "durability",
})


#: Each class's field names, read once.
_FIELDS: Dict[type, tuple] = {}


class _Wire:
    """Reads and writes an API object whose fields are the dataclass's."""

    _nested: Dict[str, Any] = {}
    _always: frozenset = frozenset()

    @classmethod
    def from_json(cls: Type[T], data: Dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = _FIELDS.get(cls)
        if names is None:
            names = _FIELDS[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        kwargs = {name: data[name] for name in names if name in data}
        for name, nested in cls._nested.items():
            value = kwargs.get(name)
            if value is not None:
                if isinstance(nested, list):
                    kwargs[name] = [nested[0].from_json(v) for v in value]
                else:
                    kwargs[name] = nested.from_json(value)
        return cls(**kwargs)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL and f.name not in self._always:
                continue
            if isinstance(value, _Wire):
                value = value.to_json()
            elif isinstance(value, list):
                value = [v.to_json() if isinstance(v, _Wire) else v for v in value]
            out[f.name] = value
        return out


def _payload_bytes(payload: Any, payload_base64: Optional[str]) -> bytes:
    if payload_base64 is not None:
        return base64.b64decode(payload_base64)
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


@dataclass
class Enqueued(_Wire):
    """One enqueued job: its id, and whether a job with its dedup id already existed."""

    id: str
    duplicate: bool


@dataclass
class AttemptError(_Wire):
    """A failed attempt's error (nack, fail, ``"lease expired"``)."""

    attempt: int
    error: str
    at: str


@dataclass
class LeasedJob(_Wire):
    """A job handed out by a lease; present ``lease_token`` to settle it."""

    id: str
    queue: str
    lease_token: str
    attempt: int
    max_attempts: int
    priority: int
    payload: Any
    headers: Dict[str, str]
    dedup_id: Optional[str]
    enqueued_at: str
    run_at: str
    lease_expires_at: str
    payload_base64: Optional[str] = None
    ordering_key: Optional[str] = None
    partition: Optional[int] = None

    @property
    def body(self) -> bytes:
        """The payload's bytes: the JSON text as enqueued, or the decoded ``payload_base64``."""
        return _payload_bytes(self.payload, self.payload_base64)


@dataclass
class Job(_Wire):
    """A job as ``GET /v1/jobs/{id}`` and the dead letters show it."""

    id: str
    queue: str
    state: str
    attempt: int
    max_attempts: int
    priority: int
    payload: Any
    headers: Dict[str, str]
    dedup_id: Optional[str]
    enqueued_at: str
    run_at: str
    lease_expires_at: Optional[str]
    errors: List[AttemptError] = field(default_factory=list)
    payload_base64: Optional[str] = None
    ordering_key: Optional[str] = None
    partition: Optional[int] = None
    #: When it was cancelled (state ``cancelled``), or, while ``leased``, when a cancel was asked.
    cancelled_at: Optional[str] = None
    _nested = {"errors": [AttemptError]}

    @property
    def body(self) -> bytes:
        """The payload's bytes: the JSON text as enqueued, or the decoded ``payload_base64``."""
        return _payload_bytes(self.payload, self.payload_base64)


@dataclass
class Backoff(_Wire):
    """Delay before a nacked job runs again: ``min(max_ms, initial_ms × multiplier^(n−1))``, jittered."""

    initial_ms: int
    max_ms: int
    multiplier: float
    jitter: str


@dataclass
class RateLimit(_Wire):
    """Leases per second over every worker, with a burst."""

    per_second: float
    burst: int


@dataclass
class QueueConfig(_Wire):
    """A queue's whole config, as ``PUT /v1/queues/{queue}`` answers it."""

    delivery: str
    visibility_timeout_ms: int
    max_attempts: int
    backoff: Backoff
    dedup_window_ms: int
    ordering: str = "none"
    partitions: int = 16
    dead_blocks_key: bool = False
    rate_limit: Optional[RateLimit] = None
    rate_limit_by: Optional[str] = None
    max_in_flight: Optional[int] = None
    max_in_flight_per_key: Optional[int] = None
    max_depth: Optional[int] = None
    #: ``"fsync"`` or ``"relaxed"``; ``None``: the server's own durability.
    durability: Optional[str] = None
    _nested = {"backoff": Backoff, "rate_limit": RateLimit}


@dataclass
class QueueStats(_Wire):
    """Jobs of a queue by state."""

    ready: int
    scheduled: int
    leased: int
    dead: int
    blocked: int = 0
    cancelled: int = 0
    oldest_ready_age_ms: Optional[int] = None


@dataclass
class Advice(_Wire):
    """What the server's lease adviser sees wrong with a queue (``kind`` ``lease_timeout``:
    handlers hold their leases for most of the visibility timeout, so jobs get delivered twice)."""

    kind: str
    message: str


@dataclass
class QueueInfo(_Wire):
    """A queue: its config, whether it is paused, its stats, and the lease adviser's advice."""

    name: str
    config: QueueConfig
    paused: bool
    stats: QueueStats
    advice: List[Advice] = field(default_factory=list)
    _nested = {"config": QueueConfig, "stats": QueueStats, "advice": [Advice]}


@dataclass
class ItemError(_Wire):
    """Why one item of a batch settle was refused."""

    code: str
    message: str


@dataclass
class SettleResult(_Wire):
    """One item's result in a batch settle (``/v1/acks``, ``/v1/nacks``...)."""

    id: str
    ok: bool
    error: Optional[ItemError] = None
    outcome: Optional[str] = None
    run_at: Optional[str] = None
    lease_expires_at: Optional[str] = None
    _nested = {"error": ItemError}

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"id": self.id, "ok": self.ok}
        for name in ("error", "outcome", "run_at", "lease_expires_at"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_json() if isinstance(value, _Wire) else value
        return out


@dataclass
class DeadPage(_Wire):
    """A page of dead letters; pass ``next`` as ``after`` for the next page (``None``: the last)."""

    jobs: List[Job]
    next: Optional[str]
    _nested = {"jobs": [Job]}


@dataclass
class Begin(_Wire):
    """The answer of an idempotency ``begin``.

    ``state`` is ``"acquired"`` (apply the effect, then complete or release), ``"in_progress"``
    (``owner`` holds it until ``until``) or ``"completed"`` (``result`` is what was recorded).
    """

    state: str
    owner: Optional[str] = None
    until: Optional[str] = None
    result: Any = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"state": self.state}
        if self.state == "in_progress":
            out.update(owner=self.owner, until=self.until)
        if self.state == "completed":
            out["result"] = self.result
        return out


@dataclass
class MemberView(_Wire):
    """A consumer-group member's own view: what it owns and is giving up."""

    member_id: str
    generation: int
    partitions: List[int]
    revoking: List[int]
    heartbeat_interval_ms: int


@dataclass
class MemberInfo(_Wire):
    """A member as the group's description shows it."""

    member_id: str
    name: Optional[str]
    partitions: List[int]
    revoking: List[int]
    session_timeout_ms: int
    joined_at: str
    last_heartbeat_at: str


@dataclass
class PartitionInfo(_Wire):
    """One partition of a group's queue: its owner and load."""

    partition: int
    owner: Optional[str]
    moving_to: Optional[str]
    lag: int
    ready: int
    oldest_ready_age_ms: Optional[int]


@dataclass
class GroupInfo(_Wire):
    """A consumer group: its generation, members and partitions."""

    group: str
    generation: int
    members: List[MemberInfo]
    partitions: List[PartitionInfo]
    _nested = {"members": [MemberInfo], "partitions": [PartitionInfo]}


@dataclass
class CommitEnqueued(_Wire):
    """The jobs a commit enqueued into one queue."""

    queue: str
    jobs: List[Enqueued]
    _nested = {"jobs": [Enqueued]}


@dataclass
class CommitOutcome(_Wire):
    """What a commit enqueued; ``replayed`` when a retry of an applied ``commit_id``."""

    enqueued: List[CommitEnqueued]
    replayed: bool
    _nested = {"enqueued": [CommitEnqueued]}


@dataclass
class Producer(_Wire):
    """A registered producer: its epoch (fences older instances) and last checkpoint."""

    id: str
    epoch: int
    checkpoint: Any = None


@dataclass
class Schedule(_Wire):
    """A cron schedule, as ``GET /v1/schedules/{name}`` shows it."""

    name: str
    queue: str
    cron: str
    timezone: str
    catch_up: str
    paused: bool
    next_tick: Optional[str]
    next_ticks: List[str]
    last_tick: Optional[str] = None
    last_job_id: Optional[str] = None
    payload: Any = None
    payload_base64: Optional[str] = None
    job: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FiredTick(_Wire):
    """A tick fired by ``POST /v1/schedule-ticks``."""

    schedule: str
    tick: str
    job_id: str
    duplicate: bool


@dataclass
class TickReport(_Wire):
    """What one pass of ``POST /v1/schedule-ticks`` fired."""

    fired: List[FiredTick]
    skipped: int
    _nested = {"fired": [FiredTick]}


@dataclass
class RedriveResult(_Wire):
    """The reply of a redrive (``POST /v1/queues/{queue}/dead/redrive``).

    ``matched`` counts the dead jobs that pass the filters (the ``limit`` aside), ``redriven`` those
    made ready (0 in a dry run), ``last`` the highest id redriven: pass it as ``after`` to go on.
    """

    matched: int
    redriven: int
    last: Optional[str]


@dataclass
class RedriveFilter(_Wire):
    """Which dead jobs a paced redrive takes and where to: the fields its request named.

    Its ``dead_before`` is capped at the redrive's start, so a job that dies again is not taken again.
    """

    ids: Optional[List[str]] = None
    limit: Optional[int] = None
    error_contains: Optional[str] = None
    dead_after: Optional[str] = None
    dead_before: Optional[str] = None
    min_attempts: Optional[int] = None
    after: Optional[str] = None
    to_queue: Optional[str] = None
    dry_run: bool = False

    def to_json(self) -> Dict[str, Any]:
        # The API omits every field the request did not name (and ``dry_run`` when false).
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, False)}


@dataclass
class PacedRedrive(_Wire):
    """A paced redrive, as ``GET /v1/redrives/{id}`` shows it.

    ``state`` is ``"running"``, ``"stopped"`` or ``"done"``; ``matched`` the dead jobs that matched
    when it started; ``redriven`` the jobs moved so far, ``cursor`` the highest id among them;
    ``error`` why it stopped, when an error stopped it (its queue or ``to_queue`` was deleted).
    """

    id: str
    queue: str
    filter: RedriveFilter
    rate_per_second: int
    state: str
    matched: int
    redriven: int
    cursor: Optional[str]
    created_at: str
    finished_at: Optional[str]
    error: Optional[str]
    _nested = {"filter": RedriveFilter}
