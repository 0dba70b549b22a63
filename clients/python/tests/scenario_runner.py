"""Runs a shared scenario file (clients/scenarios, format in its README.md) through a client."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Union

import onceq
from onceq.types import _Wire

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
_PATH = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


class ScenarioFailed(AssertionError):
    pass


def files() -> List[Path]:
    return sorted(SCENARIOS.glob("*.json"))


def resolve(value: Any, saved: Dict[str, Any], queue: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        if value == "$queue":
            return queue
        parts = value[1:].split(".")
        head, rest = parts[0], parts[1:]
        m = _PATH.fullmatch(head)
        if m is None or m.group(1) not in saved:
            raise ScenarioFailed(f"reference {value}: no result saved as {head.split('[')[0]!r}")
        current = saved[m.group(1)]
        steps = [m.group(2)] + rest
        for i, step in enumerate(steps):
            if i > 0:
                m = _PATH.fullmatch(step)
                if m is None:
                    raise ScenarioFailed(f"reference {value}: bad path part {step!r}")
                if not isinstance(current, dict) or m.group(1) not in current:
                    raise ScenarioFailed(f"reference {value}: no field {m.group(1)!r}")
                current = current[m.group(1)]
                step = m.group(2)
            for index in re.findall(r"\[(\d+)\]", step):
                if not isinstance(current, list) or int(index) >= len(current):
                    raise ScenarioFailed(f"reference {value}: no item {index}")
                current = current[int(index)]
        return current
    if isinstance(value, dict):
        return {k: resolve(v, saved, queue) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, saved, queue) for v in value]
    return value


def matches(expect: Any, actual: Any, path: str = "") -> List[str]:
    """The mismatches of ``actual`` against ``expect`` (empty: it matches)."""
    if expect == "<any>":
        return []
    if isinstance(expect, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: expected an object, got {json.dumps(actual)}"]
        out: List[str] = []
        for k, v in expect.items():
            if v == "<absent>":
                if k in actual:
                    out.append(f"{path}.{k}: expected absent, got {json.dumps(actual[k])}")
            elif k not in actual:
                out.append(f"{path}.{k}: missing")
            else:
                out.extend(matches(v, actual[k], f"{path}.{k}"))
        return out
    if isinstance(expect, list):
        if not isinstance(actual, list) or len(actual) != len(expect):
            return [f"{path or '.'}: expected {len(expect)} items, got {json.dumps(actual)}"]
        out = []
        for i, (e, a) in enumerate(zip(expect, actual)):
            out.extend(matches(e, a, f"{path}[{i}]"))
        return out
    if isinstance(expect, bool) or isinstance(actual, bool) or expect is None or actual is None:
        same = expect is actual or (type(expect) is type(actual) and expect == actual)
    elif isinstance(expect, (int, float)) and isinstance(actual, (int, float)):
        same = float(expect) == float(actual)
    else:
        same = expect == actual
    return [] if same else [f"{path or '.'}: expected {json.dumps(expect)}, got {json.dumps(actual)}"]


def _wire(value: Any) -> Any:
    if isinstance(value, _Wire):
        return value.to_json()
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def operations(client: Any, queue: str) -> Dict[str, Callable[[Dict[str, Any]], Any]]:
    """Each op of the format as a call of ``client`` (a `Client`, or an `AsyncClient`: then each
    returns a coroutine), giving the API body the README names."""

    def key(a: Dict[str, Any]) -> str:
        return f"{queue}.{a['key']}"

    def empty(x: Any) -> Any:
        if asyncio.iscoroutine(x):
            async def wait() -> Dict[str, Any]:
                await x
                return {}
            return wait()
        return {}

    def wrap(x: Any, shape: Callable[[Any], Any]) -> Any:
        if asyncio.iscoroutine(x):
            async def wait() -> Any:
                return shape(await x)
            return wait()
        return shape(x)

    def jobs(x: Any) -> Dict[str, Any]:
        return {"jobs": _wire(x)}

    def results(x: Any) -> Dict[str, Any]:
        return {"results": _wire(x)}

    return {
        "queue_get": lambda a: wrap(client.queue_get(queue), _wire),
        "enqueue": lambda a: wrap(client.enqueue_many(queue, a["jobs"]), jobs),
        "lease": lambda a: wrap(client.lease(queue, a.get("max_jobs", 1), visibility_timeout_ms=a.get(
            "visibility_timeout_ms"), wait_ms=a.get("wait_ms")), jobs),
        "job_get": lambda a: wrap(client.job_get(a["id"]), _wire),
        "ack": lambda a: empty(client.ack(a["id"], a["lease_token"])),
        "nack": lambda a: empty(client.nack(a["id"], a["lease_token"], delay_ms=a.get("delay_ms"),
                                            error=a.get("error"))),
        "extend": lambda a: wrap(client.extend(a["id"], a["lease_token"], a["visibility_timeout_ms"]),
                                 lambda at: {"lease_expires_at": at}),
        "fail": lambda a: empty(client.fail(a["id"], a["lease_token"], a["error"])),
        "release": lambda a: empty(client.release(a["id"], a["lease_token"], delay_ms=a.get("delay_ms"))),
        "acks": lambda a: wrap(client.acks(a["acks"]), results),
        "nacks": lambda a: wrap(client.nacks(a["nacks"]), results),
        "extends": lambda a: wrap(client.extends(a["extends"]), results),
        "fails": lambda a: wrap(client.fails(a["fails"]), results),
        "releases": lambda a: wrap(client.releases(a["releases"]), results),
        "dead_list": lambda a: wrap(client.dead_list(queue, limit=a.get("limit"), after=a.get("after")), _wire),
        "dead_redrive": lambda a: wrap(client.dead_redrive(queue, ids=a.get("ids"), limit=a.get("limit")), _wire),
        "dead_purge": lambda a: wrap(client.dead_purge(queue), lambda n: {"purged": n}),
        "idempotency_begin": lambda a: wrap(client.idempotency_begin(key(a), a["owner"], a["ttl_ms"],
                                                                     a.get("fingerprint")), _wire),
        "idempotency_complete": lambda a: empty(client.idempotency_complete(key(a), a["owner"], a["result"],
                                                                            a["retention_ms"])),
        "idempotency_release": lambda a: empty(client.idempotency_release(key(a), a["owner"])),
    }


def _check(path: Path, index: int, step: Dict[str, Any], expect: Any, result: Any) -> None:
    if expect is None:
        if "error" in result:
            raise ScenarioFailed(f"{path.name} step {index} ({step['op']}): failed with {result}, expected success")
        return
    if "error" in result and "error" not in expect:
        raise ScenarioFailed(f"{path.name} step {index} ({step['op']}): failed with {result}, expected {expect}")
    if "error" in expect and "error" not in result:
        raise ScenarioFailed(f"{path.name} step {index} ({step['op']}): succeeded with {result}, expected {expect}")
    problems = matches(expect, result)
    if problems:
        raise ScenarioFailed(f"{path.name} step {index} ({step['op']}): expected {json.dumps(expect)}, got "
                             f"{json.dumps(result)}: " + "; ".join(problems))


def _load(path: Path) -> Dict[str, Any]:
    scenario = json.loads(path.read_text())
    if scenario.get("name") != path.stem:
        raise ScenarioFailed(f"{path.name}: its name is {scenario.get('name')!r}, not {path.stem!r}")
    return scenario


def _fresh_queue(name: str) -> str:
    return f"scn-{name}-{secrets.token_hex(4)}"


def run(client: onceq.Client, path: Path) -> int:
    """Runs one scenario through the blocking client; returns the number of steps run."""
    scenario = _load(path)
    queue = _fresh_queue(scenario["name"])
    client.queue_put(queue, **scenario["queue"])
    ops = operations(client, queue)
    saved: Dict[str, Any] = {}
    for index, step in enumerate(scenario["steps"]):
        args = resolve(step.get("args", {}), saved, queue)
        if step["op"] == "sleep":
            time.sleep(args["ms"] / 1000)
            result: Any = {}
        elif step["op"] not in ops:
            raise ScenarioFailed(f"{path.name} step {index}: unknown op {step['op']!r}")
        else:
            try:
                result = ops[step["op"]](args)
            except onceq.OnceqError as e:
                result = {"error": e.code}
        _check(path, index, step, resolve(step.get("expect"), saved, queue), result)
        if "save" in step:
            saved[step["save"]] = result
    return len(scenario["steps"])


async def run_async(client: onceq.AsyncClient, path: Path) -> int:
    """Runs one scenario through the asyncio client."""
    scenario = _load(path)
    queue = _fresh_queue(scenario["name"])
    await client.queue_put(queue, **scenario["queue"])
    ops = operations(client, queue)
    saved: Dict[str, Any] = {}
    for index, step in enumerate(scenario["steps"]):
        args = resolve(step.get("args", {}), saved, queue)
        if step["op"] == "sleep":
            await asyncio.sleep(args["ms"] / 1000)
            result: Any = {}
        elif step["op"] not in ops:
            raise ScenarioFailed(f"{path.name} step {index}: unknown op {step['op']!r}")
        else:
            try:
                result = await ops[step["op"]](args)
            except onceq.OnceqError as e:
                result = {"error": e.code}
        _check(path, index, step, resolve(step.get("expect"), saved, queue), result)
        if "save" in step:
            saved[step["save"]] = result
    return len(scenario["steps"])
