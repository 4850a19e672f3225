"""What a failure of the link's database is, and how it is told in one line.

Rules:

* Every failure of the link's database is a :data:`DatabaseError` (SQLAlchemy's, which wraps
  SQLite's and PostgreSQL's own); an :data:`OperationalError` is the machine's or the
  network's trouble (a full disk, an I/O error, a lost server, a lock held too long), which
  the caller may retry; an :data:`IntegrityError` is a constraint refusing a row.
* :func:`error_reason` is what the engine said, on one line, without SQLAlchemy's dump of the
  statement and its parameters (which may hold a node's data); :func:`error_name` is the
  engine's name for it (SQLite's error name, PostgreSQL's SQLSTATE).
* A foundation: the state (:mod:`flwrmtls.state.database`) and the error catalogue
  (:mod:`flwrmtls.wire.refusals`) both read these, and it imports neither.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy.exc

__all__ = ["DatabaseError", "IntegrityError", "OperationalError", "error_name", "error_reason"]

DatabaseError = sqlalchemy.exc.SQLAlchemyError
"""Any failure of the link's database."""
OperationalError = sqlalchemy.exc.OperationalError
"""The machine's or the network's trouble: a full disk, an I/O error, a lost server, a lock."""
IntegrityError = sqlalchemy.exc.IntegrityError
"""A constraint refused a row."""


def error_reason(error: BaseException) -> str:
    """What the database said, without SQLAlchemy's statement dump (one line)."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error)
    return " ".join(text.split()) or type(error).__name__


def error_name(error: BaseException) -> str:
    """The engine's name of the error (SQLite's error name, PostgreSQL's SQLSTATE class)."""
    original = getattr(error, "orig", None)
    if isinstance(original, sqlite3.Error):
        return getattr(original, "sqlite_errorname", "") or type(original).__name__
    sqlstate = getattr(original, "sqlstate", None)
    if original is not None:
        return f"{type(original).__name__}{f' {sqlstate}' if sqlstate else ''}"
    return type(error).__name__
