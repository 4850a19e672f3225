"""The link's database: a SQLite file (one link) or a PostgreSQL URL (several links), one API.

Rules:

* ``--database`` is a SQLite file path or a ``postgresql://`` (``postgres://``) URL; anything
  else with ``://`` is refused in one line (:func:`parse_location`). Every other module sees
  only :class:`Database`: one schema (:mod:`flwrmtls.state.schema`, migrated with Alembic),
  one set of queries in the SQL both engines speak, run through SQLAlchemy Core's
  :func:`~sqlalchemy.text` with named parameters (``:name``; ``IN :name`` takes a list).
* Why SQLAlchemy Core with textual SQL rather than its expression language: the queries are
  hand-tuned and short, and the portable subset (``ON CONFLICT``, ``CASE``, ``RETURNING``,
  ``LIMIT``/``OFFSET``) covers them; SQLAlchemy gives the engines, the parameter binding, the
  type mapping of the schema and Alembic's migrations, so no query exists twice.
* One connection per link process, in autocommit mode: a statement outside a transaction
  commits on its own; :mod:`flwrmtls.state.transaction` opens the transactions. It is used
  from the link's event loop only (a statement never awaits).
* SQLite: WAL, ``synchronous=NORMAL``, foreign keys on; the file is private (0600) before
  SQLite creates it. PostgreSQL: every statement waits at most ``LOCK_TIMEOUT`` seconds for a
  lock, and a session idle inside a transaction for ``IDLE_IN_TRANSACTION`` seconds is ended by
  the server (a replica stopped mid-transaction cannot hold the others up for longer).
* A PostgreSQL URL is never logged or shown with its password (:attr:`Database.display`); a
  URL that carries one is warned about: it shows in the process list (use ``PGPASSFILE`` or a
  client certificate, which libpq reads itself).
* Errors: every failure of the database is a :data:`DatabaseError` (SQLAlchemy's); an
  :data:`OperationalError` is the machine's or the network's trouble (full disk, lost server),
  which the caller may retry (:mod:`flwrmtls.dberrors`, re-exported here).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeAlias

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import TextClause

from flwrmtls.dberrors import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    error_name,
    error_reason,
)
from flwrmtls.errors import InputError

__all__ = [
    "CHANNEL",
    "IDLE_IN_TRANSACTION",
    "LOCK_TIMEOUT",
    "Database",
    "DatabaseError",
    "IntegrityError",
    "OperationalError",
    "error_name",
    "error_reason",
    "parse_location",
]

LOCK_TIMEOUT = 10.0
"""PostgreSQL: seconds a statement waits for a lock before it fails (then UNAVAILABLE)."""
IDLE_IN_TRANSACTION = 30.0
"""PostgreSQL: seconds a session may sit idle inside a transaction before the server ends it."""

CHANNEL = "flwrmtls"
"""PostgreSQL: the NOTIFY channel link processes announce changes on."""
MAX_PAYLOAD = 7900
"""PostgreSQL refuses a NOTIFY payload of 8000 bytes or more."""

log = logging.getLogger("flwrmtls.state")

Rows: TypeAlias = CursorResult[*tuple[Any, ...]]
"""What a statement returns: rows of any columns, rowcount, scalar helpers."""

_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
_EXPANDING = re.compile(r"\bIN\s+:(\w+)", re.IGNORECASE)


def parse_location(location: str | Path) -> URL:
    """The SQLAlchemy URL of ``--database``: a SQLite path or a PostgreSQL URL."""
    text = str(location)
    if "://" not in text:
        return URL.create("sqlite", database=text)
    if not text.startswith(_SCHEMES):
        scheme = text.split("://", 1)[0]
        raise InputError(
            f"--database {scheme}://... is not a SQLite file or a postgresql:// URL: "
            "give a file path (one link) or postgresql://USER@HOST:PORT/DB (several links)"
        )
    try:
        url = make_url(text)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise InputError(f"--database: not a valid postgresql:// URL: {error}") from None
    if not url.database:
        raise InputError(
            "--database: the postgresql:// URL names no database: "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
    return url.set(drivername="postgresql+psycopg")


@lru_cache(maxsize=2048)
def _text(sql: str) -> TextClause:
    """The statement for ``sql``, built once: ``IN :name`` parameters take lists."""
    clause = sqlalchemy.text(sql)
    names = _EXPANDING.findall(sql)
    if names:
        clause = clause.bindparams(*(sqlalchemy.bindparam(n, expanding=True) for n in names))
    return clause


class Database:
    """One autocommit connection to the link's database."""

    def __init__(self, location: str | Path) -> None:
        self.url = parse_location(location)
        self.dialect = "sqlite" if self.url.drivername == "sqlite" else "postgresql"
        self.display = (
            str(self.url.database)
            if self.dialect == "sqlite"
            else self.url.set(drivername="postgresql").render_as_string(hide_password=True)
        )
        """The location, safe to log."""
        if self.url.password:
            log.warning(
                "the --database URL carries a password: every user of this host can read it in "
                "the process list; put it in PGPASSFILE (or use a client certificate) instead"
            )
        self.engine = _engine(self.url)
        self.connection: Connection = self.engine.connect()
        self.origin = ""
        """The link process announcements are signed with (so it skips its own)."""

    @property
    def shared(self) -> bool:
        """Whether other link processes may use the same database (PostgreSQL)."""
        return self.dialect == "postgresql"

    @property
    def path(self) -> str:
        """SQLite: the file (``:memory:`` for none); PostgreSQL: the display URL."""
        return self.display

    @property
    def libpq_url(self) -> str:
        """PostgreSQL: the URL for a libpq connection of its own (the listener)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def execute(
        self, sql: str, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    ) -> Rows:
        """Run one statement (a sequence of parameter sets runs it once per set)."""
        if isinstance(parameters, Sequence) and not parameters:
            return self.connection.execute(_text("SELECT 1 WHERE 1 = 0"))
        try:
            return self.connection.execute(_text(sql), parameters)
        except sqlalchemy.exc.DBAPIError as error:
            if error.connection_invalidated:
                self._reset()
            raise

    def publish(self, topic: str, value: object) -> None:
        """Tell the other link processes on this database that ``topic``/``value`` changed:
        delivered when the open transaction commits (at once outside one, never after a
        rollback). Nothing on SQLite, which one link process uses."""
        if not self.shared:
            return
        payload = json.dumps([self.origin, topic, value], separators=(",", ":"))
        if len(payload.encode()) >= MAX_PAYLOAD:
            raise ValueError(f"announcement of {len(payload)} bytes: split it")
        self.execute(
            "SELECT pg_notify(:channel, :payload)", {"channel": CHANNEL, "payload": payload}
        )

    def _reset(self) -> None:
        """The server connection was lost: the next statement opens a new one."""
        try:
            self.connection.rollback()
        except DatabaseError:
            self.connection = self.engine.connect()

    def raw_sqlite(self) -> sqlite3.Connection:
        """SQLite only: the sqlite3 connection under this one (tests, the crash hook)."""
        assert self.dialect == "sqlite"
        raw = self.connection.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def _engine(url: URL) -> Engine:
    if url.drivername == "sqlite":
        engine = sqlalchemy.create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
            connect_args={"check_same_thread": False},
        )

        @sqlalchemy.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        return engine
    options = (
        f"-c lock_timeout={int(LOCK_TIMEOUT * 1000)} "
        f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION * 1000)}"
    )
    return sqlalchemy.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"options": options, "connect_timeout": 10},
    )
