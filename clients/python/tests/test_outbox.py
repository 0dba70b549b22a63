"""Outbox staging with the real relay (`onceq relay`, the repository's build): a message staged
in a committed transaction arrives in the onceq queue once, with its headers and
the dedup id `<outbox name>-<row id>`, in staging order; one staged in a rolled-back transaction never does. On
SQLite (sqlite3) and on PostgreSQL (psycopg), each test with its own file or schema."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import onceq
from onceq.outbox import Message, OutboxNotReady, stage
from conftest import onceq_bin
from worker_helpers import wait_for

DATABASE_URL = os.environ.get("ONCEQ_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")


class Relay:
    def __init__(self, args: List[str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen([onceq_bin(), "relay", *args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def lease_all(client: onceq.Client, queue: str, want: int, timeout: float = 15) -> List[onceq.LeasedJob]:
    got: List[onceq.LeasedJob] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got.extend(client.lease(queue, 100, wait_ms=500))
    return got


def test_sqlite_staging_reaches_the_queue_through_the_relay(client: onceq.Client, server, queue: str,
                                                            tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "shop.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT)")
    with pytest.raises(OutboxNotReady, match="onceq relay"):
        stage(conn, Message.json(queue, {"order": 0}))
    relay = Relay(["--outbox", f"sqlite:{db}", "--sink", "onceq", "--server", server.url, "--poll-interval-ms", "50"],
                  tmp_path / "relay.log")
    try:
        assert wait_for(lambda: conn.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                                             "'onceq_outbox_messages'").fetchone()[0] == 1 or not relay.alive(), 20)
        assert relay.alive(), relay.log.read_text()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO orders VALUES (1, 'ada')")
        first = stage(conn, Message.json(queue, {"order": 1}, headers={"kind": "placed"}, ordering_key="ada"))
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO orders VALUES (2, 'bob')")
        stage(conn.cursor(), Message.json(queue, {"order": 2}))
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        last = stage(conn, Message(queue, b"\xff raw", ordering_key="ada"))
        conn.execute("COMMIT")
        jobs = lease_all(client, queue, 2)
        time.sleep(0.5)
        jobs += client.lease(queue, 100)
    finally:
        relay.stop()
    assert [j.dedup_id for j in jobs] == [f"shop-{first}", f"shop-{last}"]
    # The relay publishes one key's messages in staging order (the onceq sink does not key the job).
    assert jobs[0].payload == {"order": 1} and jobs[0].headers == {"kind": "placed"}
    assert jobs[1].body == b"\xff raw"
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1


@pytest.fixture
def pg() -> Iterator[object]:
    import psycopg
    try:
        conn = psycopg.connect(DATABASE_URL, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {DATABASE_URL} ({e}): start it (./scripts/test does), or set "
                    "ONCEQ_TEST_DATABASE_URL")
    schema = f"pyoutbox_{secrets.token_hex(4)}"
    app = f"pyapp_{secrets.token_hex(4)}"
    conn.autocommit = True
    conn.execute(f'CREATE SCHEMA "{app}"')
    conn.execute(f'CREATE TABLE "{app}".orders (id bigint PRIMARY KEY)')
    conn.autocommit = False
    yield conn, schema, app
    conn.rollback()
    conn.autocommit = True
    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.execute(f'DROP SCHEMA IF EXISTS "{app}" CASCADE')
    conn.close()


def test_postgres_staging_reaches_the_queue_through_the_relay(client: onceq.Client, server, queue: str, pg,
                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conn, schema, app = pg
    with pytest.raises(OutboxNotReady, match="onceq relay"):
        with conn.transaction():
            stage(conn, Message.json(queue, {"order": 0}), schema=schema)
    relay = Relay(["--outbox", DATABASE_URL, "--outbox-schema", schema, "--sink", "onceq", "--server", server.url],
                  tmp_path / "relay.log")
    try:
        def ready() -> bool:
            with conn.cursor() as c:
                c.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".messages',))
                ok = c.fetchone()[0]
            conn.rollback()
            return bool(ok) or not relay.alive()
        assert wait_for(ready, 20) and relay.alive(), relay.log.read_text()
        with conn.transaction():
            conn.execute(f'INSERT INTO "{app}".orders VALUES (1)')
            with conn.cursor() as cur:
                first = stage(cur, Message.json(queue, {"order": 1}, headers={"kind": "placed"}, ordering_key="ada"),
                              schema=schema)
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute(f'INSERT INTO "{app}".orders VALUES (2)')
                stage(conn, Message.json(queue, {"order": 2}), schema=schema)
                raise RuntimeError("declined: the order and its event roll back together")
        with conn.transaction():
            second = stage(conn, Message.json(queue, {"order": 3}, ordering_key="ada"), schema=schema)
        jobs = lease_all(client, queue, 2)
        time.sleep(0.5)
        jobs += client.lease(queue, 100)
    finally:
        relay.stop()
    assert [j.dedup_id for j in jobs] == [f"{schema}-{first}", f"{schema}-{second}"]
    assert [j.payload for j in jobs] == [{"order": 1}, {"order": 3}]
    assert jobs[0].headers == {"kind": "placed"}


def test_bad_messages_are_refused_before_writing() -> None:
    conn = sqlite3.connect(":memory:")
    with pytest.raises(ValueError, match="destination"):
        stage(conn, Message("", b"x"))
    with pytest.raises(ValueError, match="payload"):
        stage(conn, Message("q", b"x" * (1024 * 1024 + 1)))
    with pytest.raises(ValueError, match="ordering key"):
        stage(conn, Message("q", b"x", ordering_key=""))
    with pytest.raises(ValueError, match="NUL"):
        stage(conn, Message("q", b"x", headers={"a": "b\0"}))
    with pytest.raises(ValueError, match="bytes"):
        stage(conn, Message("q", "text"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sqlite3 or psycopg"):
        stage(object(), Message("q", b"x"))
