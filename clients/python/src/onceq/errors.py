"""Errors of the onceq HTTP API as exceptions, one class per stable API code.

Every error answer of `onceq serve` carries ``{"error": {"code", "message"}}``; the ``code`` is
stable (docs/api.md, "Errors") and picks the class here, so callers branch with ``except``:

    try:
        client.ack(job.id, job.lease_token)
    except onceq.LeaseLost:
        ...  # the lease expired or the job was leased again: its effect may run again
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type


class OnceqError(Exception):
    """Any error answered by onceq, or met reaching it.

    ``code`` is the API's stable code (``lease_lost``, ``not_found``...), ``message`` what to do,
    ``status`` the HTTP status (``None`` when no answer arrived: a connection error).
    """

    code: str = "error"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}{where}: {self.message}"


class BadRequest(OnceqError):
    """400 ``invalid_request`` (also 405, 414, 431): a malformed request or a value out of its limit."""

    code = "invalid_request"


class Unauthorized(OnceqError):
    """401 ``unauthorized``: auth is on and the token is missing or unknown."""

    code = "unauthorized"


class Forbidden(OnceqError):
    """403 ``forbidden``: the token lacks the permission for this queue (or key) and action."""

    code = "forbidden"


class NotFound(OnceqError):
    """404 ``not_found``: unknown queue, job (acked, purged...), schedule, or path."""

    code = "not_found"


class RequestTimeout(OnceqError):
    """408 ``request_timeout``: the request's outcome is unknown; read the state back."""

    code = "request_timeout"


class Conflict(OnceqError):
    """409 ``conflict`` and the other 409 codes: the state does not allow the call."""

    code = "conflict"


class LeaseLost(Conflict):
    """409 ``lease_lost``: the token is not the job's current lease (expired, settled, leased again).

    ``jobs`` lists every stale job of a refused commit (empty otherwise).
    """

    code = "lease_lost"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 jobs: Optional[List[str]] = None) -> None:
        super().__init__(message, code=code, status=status)
        self.jobs: List[str] = list(jobs or [])


class JobCancelled(Conflict):
    """409 ``job_cancelled``: an extend of a lease whose job was cancelled; stop the handler.

    The lease stays as it was: an ack still settles the job, anything else ends it cancelled.
    """

    code = "job_cancelled"


class Fenced(Conflict):
    """409 ``fenced``: a newer epoch of this producer registered; this instance must stop."""

    code = "fenced"


class NotMember(Conflict):
    """409 ``not_member``: the consumer-group member id is not a member (any more): join again."""

    code = "not_member"


class QueueNotEmpty(Conflict):
    """409 ``queue_not_empty``: ``ordering`` or ``partitions`` change only on an empty queue."""

    code = "queue_not_empty"


class PayloadTooLarge(OnceqError):
    """413 ``payload_too_large``: a body over 16 MiB, a payload or result over 1 MiB."""

    code = "payload_too_large"


class UnsupportedMediaType(OnceqError):
    """415 ``unsupported_media_type``: a body sent with a Content-Type other than JSON."""

    code = "unsupported_media_type"


class RateLimited(OnceqError):
    """429 ``rate_limited``: the queue is at its ``max_depth``; nothing was enqueued.

    ``retry_after`` is the pause to respect, in seconds (``retry_after_ms`` in milliseconds).
    """

    code = "rate_limited"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 retry_after_ms: int = 1000) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after_ms = retry_after_ms

    @property
    def retry_after(self) -> float:
        """The pause before a retry, in seconds."""
        return self.retry_after_ms / 1000.0


class Unavailable(OnceqError):
    """503 ``unavailable``, or no answer at all (connection refused, reset, timed out): retry later."""

    code = "unavailable"


class Corrupt(OnceqError):
    """500 ``corrupt``: the server's store is damaged; retrying cannot help."""

    code = "corrupt"


_BY_CODE: Dict[str, Type[OnceqError]] = {
    cls.code: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, RequestTimeout, Conflict, LeaseLost, Fenced,
                JobCancelled, NotMember, QueueNotEmpty, PayloadTooLarge, UnsupportedMediaType, RateLimited, Unavailable, Corrupt)
}


def error_for(code: str, message: str, status: Optional[int] = None, body: Optional[Dict[str, Any]] = None) -> OnceqError:
    """The exception for an API error ``code`` (an unknown code gives a plain `OnceqError`)."""
    detail = body or {}
    cls = _BY_CODE.get(code, OnceqError)
    if cls is LeaseLost:
        return LeaseLost(message, code=code, status=status, jobs=[str(j) for j in detail.get("jobs") or []])
    if cls is RateLimited:
        retry_after_ms = detail.get("retry_after_ms")
        return RateLimited(message, code=code, status=status,
                           retry_after_ms=int(retry_after_ms) if isinstance(retry_after_ms, int) else 1000)
    return cls(message, code=code, status=status)


def error_from_response(status: int, body: bytes, retry_after_header: Optional[str] = None) -> OnceqError:
    """The exception for an HTTP error answer: its ``{"error": {...}}`` body, or the status alone."""
    import json

    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        detail = {}
        code = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                408: "request_timeout", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                429: "rate_limited", 503: "unavailable"}.get(status, "unavailable" if status >= 500 else "error")
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"HTTP {status} without an onceq error body" + (f": {text}" if text else "")
    if code == "rate_limited" and "retry_after_ms" not in detail and retry_after_header:
        try:
            detail = dict(detail, retry_after_ms=int(float(retry_after_header) * 1000))
        except ValueError:
            pass
    return error_for(code, message, status, detail)
