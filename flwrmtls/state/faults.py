"""A crash on purpose, for tests only: the link kills itself right before a chosen statement.

Rules:

* Only ``flwrmtls-superlink``'s start reads it, once, from the link process's own environment:
  ``FLWRMTLS_FAULT=<k>@<fragment>``. No flag, request or file can set it. Unset (always, in
  production) nothing is installed and no statement pays anything for it.
* Statement 0 is the first statement on the link's database connection whose SQL, with its
  parameters bound, contains ``<fragment>``; counting every statement from there (``BEGIN``
  and ``COMMIT`` included), the link dies right before statement ``k`` runs: the statements
  before it ran, it did not. ``0@<fragment>`` dies before the fragment's own statement.
* SQLite: SQLite's trace callback sees each statement as it starts, with its parameters bound
  (``BEGIN IMMEDIATE`` and ``COMMIT`` included). PostgreSQL: SQLAlchemy's
  ``before_cursor_execute`` event sees each statement before it is sent, its text followed by
  `` -- `` and its parameters' values (``BEGIN``, the lock and ``COMMIT`` included); the
  server rolls back the open transaction when the connection drops, as a crash does.
* The death is a real crash: the process sends itself SIGKILL (no ``finally`` block, no
  rollback, no flush, no exit handler: what an OOM kill or a lost host does to it), after one
  line on standard error that names the statement, so a test knows where it died.

Tests use it to crash the link at every step of a change and check what a restarted link
makes of the database (tests/e2e/test_crash_points.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy

from flwrmtls.errors import InputError
from flwrmtls.state.database import Database

__all__ = ["FAULT_VARIABLE", "CrashPoint", "install", "parse_crash_point"]

FAULT_VARIABLE = "FLWRMTLS_FAULT"


@dataclass(frozen=True, slots=True)
class CrashPoint:
    fragment: str
    """Statement 0 is the first whose SQL (parameters bound) contains this."""
    offset: int
    """The link dies right before statement ``offset``, counted from statement 0."""


def parse_crash_point(text: str) -> CrashPoint:
    """``<k>@<fragment>``; InputError names the variable otherwise."""
    count, at, fragment = text.partition("@")
    if not at or not fragment or not count.isdigit():
        raise InputError(
            f"{FAULT_VARIABLE}={text!r} is not <k>@<SQL fragment>: it is a test hook that "
            f"crashes the link on purpose; unset it"
        )
    return CrashPoint(fragment, int(count))


class _Countdown:
    """The trace callback: SQLite calls it as each statement starts, before it has any effect."""

    def __init__(self, point: CrashPoint, die: Callable[[str], None]) -> None:
        self._point = point
        self._die = die
        self._seen: int | None = None
        """Statements since statement 0 (None: statement 0 not seen yet)."""

    def __call__(self, statement: str) -> None:
        if self._seen is None:
            if self._point.fragment not in statement:
                return
            self._seen = 0
        else:
            self._seen += 1
        if self._seen == self._point.offset:
            self._die(statement)


def _kill_self(statement: str) -> None:
    line = " ".join(statement.split())[:300]
    os.write(2, f"{FAULT_VARIABLE}: the link kills itself (SIGKILL) before: {line}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # not reached: SIGKILL to oneself is delivered before os.kill returns


def install(
    db: Database | sqlite3.Connection, point: CrashPoint, die: Callable[[str], None] = _kill_self
) -> None:
    """Make ``db``'s process die at ``point`` (``die`` is for this module's own tests)."""
    countdown = _Countdown(point, die)
    if isinstance(db, sqlite3.Connection):
        db.set_trace_callback(countdown)
    elif db.dialect == "sqlite":
        db.raw_sqlite().set_trace_callback(countdown)
    else:

        def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            countdown(f"{statement} -- {parameters!r}")

        sqlalchemy.event.listen(db.engine, "before_cursor_execute", before)
