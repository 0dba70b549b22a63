"""Transactional outbox staging: write, in your own database transaction, the row that
``onceq relay`` publishes (the table contract is docs/outbox.md).

    with conn:                                   # sqlite3: one transaction
        conn.execute("INSERT INTO orders (id) VALUES (?)", (42,))
        stage(conn, Message.json("orders", {"order": 42}, ordering_key="ada"))

The message exists only if the transaction commits; the relay publishes it at least once with
the dedup id ``<outbox name>-<row id>``, which a onceq queue's dedup turns into once. Works
with a ``sqlite3`` connection or cursor, and a psycopg (3) connection or cursor (PostgreSQL,
schema ``onceq_outbox`` unless told otherwise). The relay creates and migrates the tables when
it starts (``onceq relay --outbox ...``); staging before that raises `OutboxNotReady`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

#: The limits of a message, as the relay and onceq's outbox check them (crates/onceq-outbox).
DESTINATION_LEN_MAX = 1024
PAYLOAD_BYTES_MAX = 1024 * 1024
HEADERS_COUNT_MAX = 64
HEADER_NAME_LEN_MAX = 128
HEADER_VALUE_LEN_MAX = 4096
ORDERING_KEY_LEN_MAX = 256
SCHEMA_NAME_LEN_MAX = 48
#: The PostgreSQL schema of the outbox tables unless told otherwise (the relay's default).
DEFAULT_SCHEMA = "onceq_outbox"

# SQLite's clock in milliseconds since the Unix epoch (unixepoch('subsec') needs SQLite 3.42).
_NOW_MS_SQLITE = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OutboxNotReady(RuntimeError):
    """The outbox tables do not exist yet: start ``onceq relay`` on this database once."""


@dataclass
class Message:
    """One message to publish: to ``destination`` (a onceq queue, a NATS subject, an AMQP
    routing key or a webhook path, by the relay's sink), with its payload bytes, headers, and
    an ordering key (the relay publishes one key's messages in staging order)."""

    destination: str
    payload: bytes
    headers: Dict[str, str] = field(default_factory=dict)
    ordering_key: Optional[str] = None

    @classmethod
    def json(cls, destination: str, value: Any, *, headers: Optional[Dict[str, str]] = None,
             ordering_key: Optional[str] = None) -> "Message":
        """A message whose payload is ``value`` as compact JSON."""
        payload = json.dumps(value, separators=(",", ":")).encode("utf-8")
        return cls(destination, payload, dict(headers or {}), ordering_key)

    def validate(self) -> None:
        """Raises `ValueError` naming the first limit the message breaks."""
        def text(what: str, value: Any, low: int, high: int) -> None:
            if not isinstance(value, str):
                raise ValueError(f"{what} must be a string, got {type(value).__name__}")
            n = len(value.encode("utf-8"))
            if not low <= n <= high:
                raise ValueError(f"{what} is {n} bytes; it must be {low} to {high}")
            if "\0" in value:
                raise ValueError(f"{what} contains a NUL character, which cannot be stored")

        text("the destination", self.destination, 1, DESTINATION_LEN_MAX)
        if not isinstance(self.payload, (bytes, bytearray)):
            raise ValueError(f"the payload must be bytes (use Message.json for a JSON value), got "
                             f"{type(self.payload).__name__}")
        if len(self.payload) > PAYLOAD_BYTES_MAX:
            raise ValueError(f"the payload is {len(self.payload)} bytes; the limit is {PAYLOAD_BYTES_MAX}")
        if len(self.headers) > HEADERS_COUNT_MAX:
            raise ValueError(f"{len(self.headers)} headers; the limit is {HEADERS_COUNT_MAX}")
        for name, value in self.headers.items():
            text(f"header name {name!r}", name, 1, HEADER_NAME_LEN_MAX)
            text(f"header {name!r}", value, 0, HEADER_VALUE_LEN_MAX)
        if self.ordering_key is not None:
            text("the ordering key", self.ordering_key, 1, ORDERING_KEY_LEN_MAX)


Cursor = Any
"""A ``sqlite3.Connection`` or ``Cursor``, or a psycopg 3 ``Connection`` or ``Cursor``."""


def stage(cursor: Cursor, message: Message, *, schema: str = DEFAULT_SCHEMA) -> int:
    """Writes ``message`` in the transaction of ``cursor``; returns its row id (its dedup id is
    ``<outbox name>-<row id>``). Validates first: an invalid message writes nothing. ``schema``
    names the outbox's PostgreSQL schema (the relay's ``--outbox-schema``); SQLite has none."""
    message.validate()
    headers = json.dumps(message.headers, separators=(",", ":"))
    if isinstance(cursor, (sqlite3.Connection, sqlite3.Cursor)):
        return _stage_sqlite(cursor, message, headers)
    if type(cursor).__module__.split(".")[0] == "psycopg":
        return _stage_postgres(cursor, message, headers, schema)
    raise TypeError(f"stage takes a sqlite3 or psycopg (3) connection or cursor, got {type(cursor).__name__}")


def _stage_sqlite(cursor: Union[sqlite3.Connection, sqlite3.Cursor], message: Message, headers: str) -> int:
    sql = (f"INSERT INTO onceq_outbox_messages (destination, payload, headers, ordering_key, created_at, "
           f"next_attempt_at) VALUES (?, ?, ?, ?, {_NOW_MS_SQLITE}, {_NOW_MS_SQLITE})")
    try:
        c = cursor.execute(sql, (message.destination, bytes(message.payload), headers, message.ordering_key))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            raise OutboxNotReady("the SQLite outbox tables do not exist in this database yet: start "
                                 "`onceq relay --outbox sqlite:PATH ...` on it once (it creates them)") from e
        raise
    rowid = c.lastrowid
    if rowid is None:
        raise RuntimeError("SQLite gave no row id for the staged message")
    return int(rowid)


def _stage_postgres(cursor: Any, message: Message, headers: str, schema: str) -> int:
    if not (len(schema) <= SCHEMA_NAME_LEN_MAX and _SCHEMA.fullmatch(schema)):
        raise ValueError(f"outbox schema {schema!r} is not valid: 1 to {SCHEMA_NAME_LEN_MAX} characters of "
                         "[A-Za-z0-9_], not starting with a digit")
    q = f'"{schema}"'
    # The statement of onceq's own stage (crates/onceq-outbox/src/postgres/mod.rs): a keyed
    # message first takes its key's transaction lock, so one key's row ids are in commit order;
    # wake_relays notifies sleeping relays when the transaction commits.
    sql = (f"WITH ins AS ( "
           f"INSERT INTO {q}.messages (destination, payload, headers, ordering_key) "
           f"SELECT %(d)s, %(p)s, %(h)s::jsonb, %(k)s::text "
           f"FROM (SELECT CASE WHEN %(k)s::text IS NULL THEN NULL "
           f"ELSE pg_advisory_xact_lock(hashtext('onceq_outbox.key'), hashtext(%(s)s || %(k)s::text)) END) AS l "
           f"RETURNING id) "
           f"SELECT ins.id FROM ins, {q}.wake_relays(%(c)s, hashtext(%(s)s)) AS n")
    params = {"d": message.destination, "p": bytes(message.payload), "h": headers, "k": message.ordering_key,
              "s": schema, "c": f"onceq_outbox_{schema}"}
    import psycopg

    cur = cursor.cursor() if isinstance(cursor, psycopg.Connection) else cursor
    try:
        cur.execute(sql, params)
    except psycopg.errors.UndefinedTable as e:
        raise OutboxNotReady(f"the outbox tables of schema {schema} do not exist yet: start `onceq relay --outbox "
                             f"postgres://... --outbox-schema {schema}` once (it creates them)") from e
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("PostgreSQL gave no row id for the staged message")
    return int(row[0])
