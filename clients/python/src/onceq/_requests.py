"""The requests of the HTTP API, built once for the sync and the async client.

Each function returns a `Request`: method, path, body, query, and how to read a success. The
clients only send it; so both speak exactly the same API.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from . import types as t

#: Limits of docs/api.md the client checks before sending, so the mistake is named at its source.
JOBS_PER_ENQUEUE_MAX = 1000
ITEMS_PER_SETTLE_MAX = 1000
MAX_JOBS_PER_LEASE_MAX = 1000
WAIT_MS_MAX = 20_000
IDS_PER_REDRIVE_MAX = 1000
#: A paced redrive's pace, jobs per second: 1 to this.
RATE_PER_SECOND_MAX = 10_000


@dataclass
class Request:
    """One HTTP request and the reader of its success body."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    body: Any = None
    params: Optional[Dict[str, str]] = None
    headers: Optional[Dict[str, str]] = None
    #: The request's single job id, for errors that name it.
    job_id: Optional[str] = None


def _none(_: Any) -> None:
    return None


def _seg(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def _job_id(value: Union[str, int]) -> str:
    text = str(value)
    if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"a job id is a decimal string such as \"42\", got {value!r}")
    return text


def _opt(body: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
    for name, value in fields.items():
        if value is not None:
            body[name] = value
    return body


JobSpec = Mapping[str, Any]
"""A job to enqueue, as the API takes it: ``{"payload": ..., "dedup_id": ..., ...}``."""


def job(payload: Any = None, *, payload_bytes: Optional[bytes] = None, dedup_id: Optional[str] = None,
        delay_ms: Optional[int] = None, run_at: Optional[str] = None, priority: Optional[int] = None,
        max_attempts: Optional[int] = None, headers: Optional[Mapping[str, str]] = None,
        ordering_key: Optional[str] = None, unique: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A job for `Client.enqueue_many`: a JSON ``payload``, or ``payload_bytes`` for any bytes.
    ``unique`` is `onceq.unique`'s (``{"by", "while", "window_ms"?}``)."""
    if payload_bytes is not None:
        spec: Dict[str, Any] = {"payload_base64": base64.b64encode(payload_bytes).decode("ascii")}
    else:
        spec = {"payload": payload}
    return _opt(spec, dedup_id=dedup_id, delay_ms=delay_ms, run_at=run_at, priority=priority,
                max_attempts=max_attempts, headers=dict(headers) if headers is not None else None,
                ordering_key=ordering_key, unique=dict(unique) if unique is not None else None)


def unique(by: str, while_: str, window_ms: Optional[int] = None) -> Dict[str, Any]:
    """A job's ``unique`` (docs/api.md, "Unique jobs"): no second job of its key while the first holds
    it. ``by``: ``"dedup_id"`` or ``"payload"``; ``while_`` (``while`` on the wire): ``"pending"``,
    ``"active"`` or ``"window"``, which needs ``window_ms``. The server checks them (400 `BadRequest`)."""
    return _opt({"by": by, "while": while_}, window_ms=window_ms)


def _enqueued(data: Any) -> List[t.Enqueued]:
    return [t.Enqueued.from_json(j) for j in data["jobs"]]


def _leased(data: Any) -> List[t.LeasedJob]:
    return [t.LeasedJob.from_json(j) for j in data["jobs"]]


def _results(data: Any) -> List[t.SettleResult]:
    return [t.SettleResult.from_json(r) for r in data["results"]]


def _items(items: Sequence[Mapping[str, Any]], what: str) -> List[Dict[str, Any]]:
    out = [dict(i) for i in items]
    if not 1 <= len(out) <= ITEMS_PER_SETTLE_MAX:
        raise ValueError(f"a batch {what} takes 1 to {ITEMS_PER_SETTLE_MAX} items, got {len(out)}")
    for item in out:
        item["id"] = _job_id(item.get("id", ""))
    return out


# Queues.

def queue_put(queue: str, config: Mapping[str, Any]) -> Request:
    return Request("PUT", f"/v1/queues/{_seg(queue, 'queue')}", t.QueueConfig.from_json, body=dict(config))


def queue_get(queue: str) -> Request:
    return Request("GET", f"/v1/queues/{_seg(queue, 'queue')}", t.QueueInfo.from_json)


def queue_list_page(after: Optional[str], limit: int) -> Request:
    params = {"limit": str(limit)}
    if after is not None:
        params["after"] = after
    return Request("GET", "/v1/queues", lambda d: d, params=params)


def queue_delete(queue: str) -> Request:
    return Request("DELETE", f"/v1/queues/{_seg(queue, 'queue')}", _none)


def queue_pause(queue: str) -> Request:
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/pause", _none)


def queue_resume(queue: str) -> Request:
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/resume", _none)


# Jobs.

def enqueue(queue: str, jobs: Iterable[JobSpec], *, idempotency_key: Optional[str] = None,
            producer: Optional[Mapping[str, Any]] = None) -> Request:
    specs = [dict(j) for j in jobs]
    if not 1 <= len(specs) <= JOBS_PER_ENQUEUE_MAX:
        raise ValueError(f"an enqueue takes 1 to {JOBS_PER_ENQUEUE_MAX} jobs, got {len(specs)}")
    body: Dict[str, Any] = {"jobs": specs}
    if producer is not None:
        body["producer"] = dict(producer)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/jobs", _enqueued, body=body, headers=headers)


def lease(queue: str, *, max_jobs: int = 1, visibility_timeout_ms: Optional[int] = None, wait_ms: Optional[int] = None,
          group: Optional[str] = None, member_id: Optional[str] = None) -> Request:
    if not 1 <= max_jobs <= MAX_JOBS_PER_LEASE_MAX:
        raise ValueError(f"max_jobs must be 1 to {MAX_JOBS_PER_LEASE_MAX}, got {max_jobs}")
    if wait_ms is not None and not 0 <= wait_ms <= WAIT_MS_MAX:
        raise ValueError(f"wait_ms must be 0 to {WAIT_MS_MAX}, got {wait_ms}")
    body = _opt({"max_jobs": max_jobs}, visibility_timeout_ms=visibility_timeout_ms, wait_ms=wait_ms, group=group,
                member_id=member_id)
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/leases", _leased, body=body)


def job_get(id: Union[str, int]) -> Request:
    jid = _job_id(id)
    return Request("GET", f"/v1/jobs/{jid}", t.Job.from_json, job_id=jid)


def job_cancel(id: Union[str, int]) -> Request:
    jid = _job_id(id)
    return Request("POST", f"/v1/jobs/{jid}/cancel", t.Job.from_json, job_id=jid)


def job_kill(id: Union[str, int], error: Optional[str] = None) -> Request:
    jid = _job_id(id)
    body: Dict[str, Any] = {} if error is None else {"error": error}
    return Request("POST", f"/v1/jobs/{jid}/kill", t.Job.from_json, body=body, job_id=jid)


def job_delete(id: Union[str, int]) -> Request:
    jid = _job_id(id)
    return Request("DELETE", f"/v1/jobs/{jid}", _none, job_id=jid)


def _settle(id: Union[str, int], action: str, body: Dict[str, Any], parse: Callable[[Any], Any] = _none) -> Request:
    jid = _job_id(id)
    return Request("POST", f"/v1/jobs/{jid}/{action}", parse, body=body, job_id=jid)


def ack(id: Union[str, int], lease_token: str) -> Request:
    return _settle(id, "ack", {"lease_token": lease_token})


def nack(id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None, error: Optional[str] = None) -> Request:
    return _settle(id, "nack", _opt({"lease_token": lease_token}, delay_ms=delay_ms, error=error))


def extend(id: Union[str, int], lease_token: str, visibility_timeout_ms: int) -> Request:
    return _settle(id, "extend", {"lease_token": lease_token, "visibility_timeout_ms": visibility_timeout_ms},
                   lambda d: d["lease_expires_at"])


def fail(id: Union[str, int], lease_token: str, error: str) -> Request:
    return _settle(id, "fail", {"lease_token": lease_token, "error": error})


def release(id: Union[str, int], lease_token: str, *, delay_ms: Optional[int] = None) -> Request:
    return _settle(id, "release", _opt({"lease_token": lease_token}, delay_ms=delay_ms))


def batch(kind: str, items: Sequence[Mapping[str, Any]]) -> Request:
    """``kind`` is one of acks, nacks, extends, fails, releases."""
    if kind not in ("acks", "nacks", "extends", "fails", "releases"):
        raise ValueError(f"unknown batch settle {kind!r}: acks, nacks, extends, fails or releases")
    return Request("POST", f"/v1/{kind}", _results, body={kind: _items(items, kind)})


# Dead letters.

def dead_list(queue: str, *, limit: Optional[int] = None, after: Optional[Union[str, int]] = None) -> Request:
    params: Dict[str, str] = {}
    if limit is not None:
        params["limit"] = str(limit)
    if after is not None:
        params["after"] = _job_id(after)
    return Request("GET", f"/v1/queues/{_seg(queue, 'queue')}/dead", t.DeadPage.from_json, params=params)


def _time(value: Union[str, datetime, None], what: str) -> Optional[str]:
    """An RFC 3339 time: a string as given, or an aware datetime (a naive one has no zone to send)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be an aware datetime (with a timezone), got the naive {value!r}")
        return value.isoformat()
    raise TypeError(f"{what} must be an RFC 3339 string or a datetime, got {type(value).__name__}")


def redrive_body(*, ids: Optional[Sequence[Union[str, int]]] = None, limit: Optional[int] = None,
                 error_contains: Optional[str] = None, dead_after: Union[str, datetime, None] = None,
                 dead_before: Union[str, datetime, None] = None, min_attempts: Optional[int] = None,
                 after: Optional[Union[str, int]] = None, to_queue: Optional[str] = None,
                 dry_run: Optional[bool] = None) -> Dict[str, Any]:
    """A redrive's filters as the API takes them; the server checks them all, these few are named here."""
    if ids is not None and len(ids) > IDS_PER_REDRIVE_MAX:
        raise ValueError(f"a redrive takes at most {IDS_PER_REDRIVE_MAX} ids, got {len(ids)}")
    if to_queue is not None:
        _seg(to_queue, "to_queue")
    return _opt({}, ids=[_job_id(i) for i in ids] if ids is not None else None, limit=limit,
                error_contains=error_contains, dead_after=_time(dead_after, "dead_after"),
                dead_before=_time(dead_before, "dead_before"), min_attempts=min_attempts,
                after=_job_id(after) if after is not None else None, to_queue=to_queue,
                dry_run=dry_run)


def dead_redrive(queue: str, **filters: Any) -> Request:
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/dead/redrive", t.RedriveResult.from_json,
                   body=redrive_body(**filters))


def dead_purge(queue: str) -> Request:
    return Request("DELETE", f"/v1/queues/{_seg(queue, 'queue')}/dead", lambda d: int(d["purged"]))


# Paced redrives.

def _redrive_id(value: Union[str, int]) -> str:
    text = str(value)
    if not text.isdigit():
        raise ValueError(f"a paced redrive id is a decimal string such as \"1\", got {value!r}")
    return text


def redrive_start(queue: str, rate_per_second: int, **filters: Any) -> Request:
    if isinstance(rate_per_second, bool) or not isinstance(rate_per_second, int) \
            or not 1 <= rate_per_second <= RATE_PER_SECOND_MAX:
        raise ValueError(f"rate_per_second must be an integer from 1 to {RATE_PER_SECOND_MAX}, got {rate_per_second!r}")
    body = redrive_body(**filters)
    body["rate_per_second"] = rate_per_second
    return Request("POST", f"/v1/queues/{_seg(queue, 'queue')}/dead/redrive", t.PacedRedrive.from_json, body=body)


def redrive_get(id: Union[str, int]) -> Request:
    return Request("GET", f"/v1/redrives/{_redrive_id(id)}", t.PacedRedrive.from_json)


def redrive_list() -> Request:
    return Request("GET", "/v1/redrives", lambda d: [t.PacedRedrive.from_json(x) for x in d["redrives"]])


def redrive_stop(id: Union[str, int]) -> Request:
    return Request("POST", f"/v1/redrives/{_redrive_id(id)}/stop", t.PacedRedrive.from_json)


def redrive_tick() -> Request:
    return Request("POST", "/v1/redrive-ticks", lambda d: int(d["redriven"]))


# Idempotency.

def idempotency_begin(key: str, owner: str, ttl_ms: int, fingerprint: Optional[str] = None) -> Request:
    body = _opt({"owner": owner, "ttl_ms": ttl_ms}, fingerprint=fingerprint)
    return Request("POST", f"/v1/idempotency/{_seg(key, 'idempotency key')}/begin", t.Begin.from_json, body=body)


def idempotency_complete(key: str, owner: str, result: Any, retention_ms: int) -> Request:
    body = {"owner": owner, "result": result, "retention_ms": retention_ms}
    return Request("POST", f"/v1/idempotency/{_seg(key, 'idempotency key')}/complete", _none, body=body)


def idempotency_release(key: str, owner: str) -> Request:
    return Request("POST", f"/v1/idempotency/{_seg(key, 'idempotency key')}/release", _none, body={"owner": owner})


# Consumer groups.

def _group_path(queue: str, group: str) -> str:
    return f"/v1/queues/{_seg(queue, 'queue')}/groups/{_seg(group, 'group')}"


def group_join(queue: str, group: str, *, name: Optional[str] = None, session_timeout_ms: Optional[int] = None) -> Request:
    body = _opt({}, name=name, session_timeout_ms=session_timeout_ms)
    return Request("POST", f"{_group_path(queue, group)}/members", t.MemberView.from_json, body=body)


def group_heartbeat(queue: str, group: str, member_id: str) -> Request:
    return Request("POST", f"{_group_path(queue, group)}/members/{_seg(member_id, 'member id')}/heartbeat",
                   t.MemberView.from_json)


def group_leave(queue: str, group: str, member_id: str) -> Request:
    return Request("DELETE", f"{_group_path(queue, group)}/members/{_seg(member_id, 'member id')}", _none)


def group_get(queue: str, group: str) -> Request:
    return Request("GET", _group_path(queue, group), t.GroupInfo.from_json)


def group_list(queue: str) -> Request:
    return Request("GET", f"/v1/queues/{_seg(queue, 'queue')}/groups",
                   lambda d: [t.GroupInfo.from_json(g) for g in d["groups"]])


# Commits and producers.

def commit(*, commit_id: Optional[str] = None, producer: Optional[Mapping[str, Any]] = None,
           ack: Optional[Sequence[Mapping[str, Any]]] = None, nack: Optional[Sequence[Mapping[str, Any]]] = None,
           fail: Optional[Sequence[Mapping[str, Any]]] = None, release: Optional[Sequence[Mapping[str, Any]]] = None,
           enqueue: Optional[Mapping[str, Sequence[JobSpec]]] = None, checkpoint: Any = None,
           has_checkpoint: bool = False) -> Request:
    body = _opt({}, commit_id=commit_id, producer=dict(producer) if producer is not None else None,
                ack=[dict(i) for i in ack] if ack else None, nack=[dict(i) for i in nack] if nack else None,
                fail=[dict(i) for i in fail] if fail else None,
                release=[dict(i) for i in release] if release else None)
    if enqueue:
        body["enqueue"] = [{"queue": q, "jobs": [dict(j) for j in jobs]} for q, jobs in enqueue.items()]
    if has_checkpoint:
        body["checkpoint"] = checkpoint
    if not any(k in body for k in ("ack", "nack", "fail", "release", "enqueue", "checkpoint")):
        raise ValueError("a commit needs at least one of ack, nack, fail, release, enqueue or checkpoint")
    return Request("POST", "/v1/commits", t.CommitOutcome.from_json, body=body)


def producer_register(id: str) -> Request:
    return Request("POST", f"/v1/producers/{_seg(id, 'producer id')}", t.Producer.from_json)


def producer_get(id: str) -> Request:
    return Request("GET", f"/v1/producers/{_seg(id, 'producer id')}", t.Producer.from_json)


# Schedules.

def schedule_put(name: str, queue: str, cron: str, *, timezone: Optional[str] = None, payload: Any = None,
                 job: Optional[Mapping[str, Any]] = None, catch_up: Optional[str] = None,
                 paused: Optional[bool] = None) -> Request:
    body = _opt({"queue": queue, "cron": cron, "payload": payload}, timezone=timezone,
                job=dict(job) if job is not None else None, catch_up=catch_up, paused=paused)
    return Request("PUT", f"/v1/schedules/{_seg(name, 'schedule name')}", t.Schedule.from_json, body=body)


def schedule_get(name: str) -> Request:
    return Request("GET", f"/v1/schedules/{_seg(name, 'schedule name')}", t.Schedule.from_json)


def schedule_list() -> Request:
    return Request("GET", "/v1/schedules", lambda d: [t.Schedule.from_json(s) for s in d["schedules"]])


def schedule_delete(name: str) -> Request:
    return Request("DELETE", f"/v1/schedules/{_seg(name, 'schedule name')}", _none)


def schedule_pause(name: str) -> Request:
    return Request("POST", f"/v1/schedules/{_seg(name, 'schedule name')}/pause", _none)


def schedule_resume(name: str) -> Request:
    return Request("POST", f"/v1/schedules/{_seg(name, 'schedule name')}/resume", _none)


def schedule_tick() -> Request:
    return Request("POST", "/v1/schedule-ticks", t.TickReport.from_json)


# Operations.

def healthz() -> Request:
    return Request("GET", "/healthz", _none)


def readyz() -> Request:
    return Request("GET", "/readyz", _none)


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
