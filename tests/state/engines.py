"""Test helpers that reach the database behind the link's back, on either engine: a statement
made to fail (as a full disk or a lost server would), and what another reader sees."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

__all__ = ["failing", "fresh_read", "is_postgres", "raw_execute"]


def is_postgres(database: Path | str) -> bool:
    return str(database).startswith("postgresql://")


def raw_execute(database: Path | str, sql: str, *args: object) -> None:
    """One statement from a connection of its own, committed (``?`` placeholders)."""
    if is_postgres(database):
        with psycopg.connect(str(database), autocommit=True) as db:
            db.execute(sql.replace("?", "%s"), args)
    else:
        with sqlite3.connect(database, isolation_level=None) as db:
            db.execute(sql, args)


@contextmanager
def failing(database: Path | str, event: str, when: str = "1") -> Iterator[None]:
    """While inside: the statement ``event`` (e.g. ``BEFORE DELETE ON run_tokens``) fails
    with a constraint error, when ``when`` holds for the row."""
    timing, _, table_event = event.partition(" ")
    table = table_event.rsplit(" ", 1)[1]
    if is_postgres(database):
        condition = "true" if when == "1" else when
        raw_execute(
            database,
            "CREATE OR REPLACE FUNCTION flwrmtls_fail() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'the disk gave way' USING ERRCODE = '23000'; END $$ "
            "LANGUAGE plpgsql",
        )
        raw_execute(
            database,
            f"CREATE TRIGGER fail_here {timing} {table_event} FOR EACH ROW WHEN ({condition}) "
            "EXECUTE FUNCTION flwrmtls_fail()",
        )
    else:
        raw_execute(
            database,
            f"CREATE TRIGGER fail_here {timing} {table_event} WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'the disk gave way'); END",
        )
    try:
        yield
    finally:
        raw_execute(
            database,
            f"DROP TRIGGER fail_here ON {table}"
            if is_postgres(database)
            else "DROP TRIGGER fail_here",
        )


def fresh_read(database: Path | str, query: str, *args: object) -> list[tuple[object, ...]]:
    """What another reader of the database sees (only committed changes)."""
    if is_postgres(database):
        with psycopg.connect(str(database), autocommit=True) as db:
            return [tuple(row) for row in db.execute(query.replace("?", "%s"), args)]
    reader = sqlite3.connect(database)
    try:
        return reader.execute(query, args).fetchall()
    finally:
        reader.close()
