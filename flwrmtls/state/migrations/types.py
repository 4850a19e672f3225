"""The column types every revision uses, so both engines store the same thing.

Times are seconds since the epoch in double precision (PostgreSQL's ``real`` is single
precision: it would round a timestamp to minutes); node ids are 64-bit; bytes are bytes.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["BYTES", "ID", "TIME", "serial"]

ID = sa.BigInteger()
TIME: sa.Double[float] = sa.Double()
BYTES = sa.LargeBinary()


def serial(name: str) -> sa.Column[int]:
    """An ever-growing integer primary key (SQLite's AUTOINCREMENT rowid, PostgreSQL's
    identity column)."""
    return sa.Column(
        name,
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.Identity(),
        primary_key=True,
    )
