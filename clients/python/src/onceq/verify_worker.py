"""``python -m onceq.verify_worker``: the worker that ``onceq verify --worker-cmd`` runs.

It speaks the protocol of the repository's docs/verify.md: it reads its settings from the
environment verify gives each process, runs this package's `Worker` on ``ONCEQ_URL`` (verify's
recording API), and in ``effectively_once`` mode guards its handler with `effectively_once`. The
handler's effect is ``POST $ONCEQ_VERIFY_EFFECT_URL {"lease_token": ...}``: verify records it
and answers what the delivery does next, where the fault schedule says it crashes:

- ``continue``: return; the runtime completes the key and acks;
- ``crash``: exit now (the effect was not recorded);
- ``crash_before_complete``: exit when the runtime is about to complete the job's key;
- ``crash_before_ack``: exit once the key is completed (without a key: when the handler
  returns), before the ack.

A crash is ``os._exit(ONCEQ_VERIFY_CRASH_EXIT_CODE)``: no cleanup, no flush, as a process that
dies. Before it exits, the process waits until no other delivery of it is between its recorded
effect and its completed key (that window is the ``crash-before-complete`` fault, which verify
injects on its own), and lets no new effect start meanwhile.

``ONCEQ_VERIFY_BROKEN_GATE=1`` runs the handler without `effectively_once`, so that verify must
report the duplicate effects the crashes then cause (onceq's own tests use it).
``ONCEQ_VERIFY_LOG_LEVEL`` (default ``ERROR``) sets the level of the worker's log, which verify
keeps per process and quotes when a process fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Dict, Optional, Set

import httpx

from .client import AsyncClient
from .worker import RunningJob, Worker, default_key, effectively_once

log = logging.getLogger("onceq.verify_worker")

#: Seconds the effect call may take: verify holds a stalled delivery's reply past its lease.
EFFECT_TIMEOUT_S = 120.0
#: How often a crashing process looks whether the other deliveries' windows closed, in seconds.
WINDOW_POLL_S = 0.005
#: Longest wait of a crash for the other deliveries' windows, in seconds: past it the process
#: exits with status 1, which stops the run, rather than crash inside a window.
WINDOW_WAIT_S_MAX = 60.0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        sys.exit(f"onceq.verify_worker: {name} is not set; this program is run by `onceq verify --worker-cmd`")
    return value


def _env_int(name: str) -> int:
    text = _env(name)
    try:
        return int(text)
    except ValueError:
        sys.exit(f"onceq.verify_worker: {name}={text!r} is not an integer")


class _Crashes:
    """The deliveries of this process between their recorded effect and their completed key,
    and the crash they were told to make."""

    def __init__(self, exit_code: int) -> None:
        self.exit_code = exit_code
        #: Keys whose effect call was sent and whose key is not completed yet.
        self.open: Set[str] = set()
        #: Keys told to crash before their complete: their window is the fault itself.
        self.exempt: Set[str] = set()
        #: What the rest of each open delivery does, by key.
        self.actions: Dict[str, str] = {}
        self.crashing = False
        self._exit: Optional["asyncio.Task[None]"] = None

    async def enter(self, key: str) -> None:
        """Opens the window of ``key`` before its effect; never returns once a crash began."""
        while self.crashing:
            await asyncio.sleep(3600)
        self.open.add(key)

    def close(self, key: str) -> None:
        self.open.discard(key)
        self.actions.pop(key, None)

    async def crash(self) -> None:
        """Exits the process once no other delivery is between its effect and its complete; never
        returns. The exit runs in a task of its own, so that no cancel of the delivery (its
        deadline) can stop it halfway, with the process taking no new effect."""
        if not self.crashing:
            self.crashing = True
            self._exit = asyncio.get_running_loop().create_task(self._exit_when_clear())
        await asyncio.Event().wait()

    async def _exit_when_clear(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WINDOW_WAIT_S_MAX
        while self.open - self.exempt:
            if loop.time() > deadline:
                print(f"onceq.verify_worker: a crash waited {WINDOW_WAIT_S_MAX} s for deliveries between their effect "
                      f"and their complete: {sorted(self.open - self.exempt)[:5]}", file=sys.stderr)
                os._exit(1)
            await asyncio.sleep(WINDOW_POLL_S)
        os._exit(self.exit_code)


class _VerifyClient(AsyncClient):
    """The runtime's client, with the crashes that come at the idempotency key's completion."""

    crashes: _Crashes

    async def idempotency_complete(self, key: str, owner: str, result: Any, retention_ms: int) -> None:
        action = self.crashes.actions.get(key)
        if action == "crash_before_complete":
            await self.crashes.crash()
        try:
            await super().idempotency_complete(key, owner, result, retention_ms)
        finally:
            self.crashes.close(key)
        if action == "crash_before_ack":
            await self.crashes.crash()


async def main_async() -> None:
    url = _env("ONCEQ_URL")
    effect_url = _env("ONCEQ_VERIFY_EFFECT_URL")
    queue = _env("ONCEQ_VERIFY_QUEUE")
    mode = _env("ONCEQ_VERIFY_MODE")
    visibility_timeout_ms = _env_int("ONCEQ_VERIFY_VISIBILITY_TIMEOUT_MS")
    claim_ttl_ms = _env_int("ONCEQ_VERIFY_CLAIM_TTL_MS")
    concurrency = _env_int("ONCEQ_VERIFY_CONCURRENCY")
    prefetch = _env_int("ONCEQ_VERIFY_PREFETCH")
    process = _env("ONCEQ_VERIFY_PROCESS")
    crashes = _Crashes(_env_int("ONCEQ_VERIFY_CRASH_EXIT_CODE"))
    guarded = mode == "effectively_once" and os.environ.get("ONCEQ_VERIFY_BROKEN_GATE", "0") != "1"

    client = _VerifyClient(url, max_connections=concurrency + prefetch + 8)
    client.crashes = crashes
    verify = httpx.AsyncClient(timeout=EFFECT_TIMEOUT_S)
    worker = Worker(client, owner=f"verify-python-{process}-{os.getpid()}", shutdown_timeout=1.0)

    async def handle(job: RunningJob) -> Optional[int]:
        key = default_key(job)
        await crashes.enter(key)
        try:
            reply = await verify.post(effect_url, json={"lease_token": job.lease_token})
            reply.raise_for_status()
            action = reply.json()["action"]
        except asyncio.CancelledError:
            # Cancelled by the runtime (shutdown): no crash may wait for this window.
            crashes.close(key)
            raise
        except Exception as e:  # noqa: BLE001 - whether the effect landed is unknown: stop loudly
            print(f"onceq.verify_worker: the effect of job {job.id} got no answer from verify: {e!r}", file=sys.stderr)
            os._exit(1)
        if action == "crash":
            crashes.close(key)
            await crashes.crash()
        if not guarded:
            # No key to complete: the window closes with the handler.
            crashes.close(key)
            if action in ("crash_before_ack", "crash_before_complete"):
                await crashes.crash()
            return None
        if action == "crash_before_complete":
            crashes.exempt.add(key)
        crashes.actions[key] = action
        return 1

    handler = effectively_once(handle, ttl_ms=claim_ttl_ms, retry_delay_ms=min(1000, claim_ttl_ms)) if guarded \
        else handle
    # The deadline stays below the claim (the decorator requires it) and above the longest
    # stall verify makes, so that no handler is cancelled while its effect call is held.
    worker.task(queue, concurrency=concurrency, prefetch=prefetch, visibility_timeout_ms=visibility_timeout_ms,
                deadline_ms=max(1, claim_ttl_ms - 1000), wait_ms=500)(handler)
    try:
        await worker.run_async(handle_signals=True)
    finally:
        await verify.aclose()
        await client.aclose()


def main() -> None:
    logging.basicConfig(level=os.environ.get("ONCEQ_VERIFY_LOG_LEVEL", "ERROR"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
