"""The shared scenarios (clients/scenarios) give, through the Python clients, the results their
files state: the same behaviour as the Rust client and the Node client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import onceq
from scenario_runner import ScenarioFailed, files, matches, run, run_async


def test_there_are_scenarios() -> None:
    names = {p.stem for p in files()}
    assert {"enqueue_dedup", "lease_ack", "stale_lease", "nack_to_dead", "redrive", "idempotency",
            "batch_settle"} <= names


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_scenario_sync(client: onceq.Client, path: Path) -> None:
    assert run(client, path) > 0


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_scenario_async(server, path: Path) -> None:  # type: ignore[no-untyped-def]
    async def go() -> int:
        async with onceq.AsyncClient(server.url) as c:
            return await run_async(c, path)

    assert asyncio.run(go()) > 0


def test_the_matcher_refuses_what_differs() -> None:
    # The runner's own check: a wrong value, a wrong length, a field that should be absent.
    assert matches({"a": 1}, {"a": 1.0, "b": 2}) == []
    assert matches({"a": 1}, {"a": 2}) != []
    assert matches({"a": [1]}, {"a": [1, 2]}) != []
    assert matches({"a": "<absent>"}, {"a": None}) != []
    assert matches({"a": "<any>"}, {"a": None}) == []
    assert matches({"a": None}, {"a": False}) != []
    with pytest.raises(ScenarioFailed):
        from scenario_runner import resolve
        resolve("$nothing.id", {}, "q")
