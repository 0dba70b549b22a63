"""Runs a `Worker` on a thread of its own for a test, and stops it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, Iterator, Optional
from contextlib import contextmanager

import onceq


@contextmanager
def running(worker: onceq.Worker) -> Iterator[onceq.Worker]:
    errors: list = []

    def main() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert wait_for(lambda: worker._stopping is not None or bool(errors), 10), "the worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop within 60 s"
    if errors:
        raise errors[0]


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def drained(client: onceq.Client, queue: str) -> Callable[[], bool]:
    def check() -> bool:
        s = client.queue_get(queue).stats
        return s.ready == 0 and s.leased == 0 and s.scheduled == 0
    return check
