"""Transactions on the link's database connection: a state change is whole or absent.

Rules:

* The connection runs in autocommit mode (:mod:`flwrmtls.state.database`): a statement
  outside a transaction commits on its own, and a statement run with several parameter sets
  commits set by set.
* Every change of more than one statement runs in ``with transactions():``, which takes the
  one write lock at once, so what the block reads cannot change before it writes: SQLite's
  ``BEGIN IMMEDIATE``; on PostgreSQL ``BEGIN`` then the transaction-scoped advisory lock
  :data:`LOCK_KEY`, which every link process sharing the database
  takes the same way (their changes of more than one statement follow one another as one
  SQLite link's do; single statements do not wait for it). ``COMMIT`` when the block ends,
  ``ROLLBACK`` when it raises.
* A block inside another joins it: the outermost block commits or rolls back everything, so a
  change made of two tables' methods is still one change.
* The in-memory mirrors of tables (token hashes, sessions, keys) follow the database, never
  lead it: :meth:`Transactions.after_commit` applies a mirror change once the outermost block
  has committed, and never after a rollback.
* A cache that must change with the block (so that later statements of the same block see
  it) changes at once and registers :meth:`Transactions.after_rollback` to forget it if the
  outermost block rolls back.

One :class:`Transactions` per connection, shared by every table on it (:class:`LinkState`
hands its own to each table), used from one thread (the link's event loop; a block never
awaits, so no other call runs inside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flwrmtls.state.database import Database, DatabaseError

__all__ = ["LOCK_KEY", "Transactions"]

LOCK_KEY = 0x666C77726D746C73
"""PostgreSQL: the advisory lock every change of more than one statement takes ("flwrmtls")."""


class Transactions:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._begin = "BEGIN IMMEDIATE" if db.dialect == "sqlite" else "BEGIN"
        self._after_commit: list[Callable[[], None]] | None = None
        """Set while a transaction is open: what to run once it has committed."""
        self._after_rollback: list[Callable[[], None]] = []
        """What to run if the open transaction rolls back."""

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """One transaction around the block (or the enclosing block's, when nested)."""
        if self._after_commit is not None:
            yield
            return
        self._after_commit = []
        self._after_rollback = []
        try:
            self._db.execute(self._begin)
            try:
                if self._db.shared:
                    self._db.execute("SELECT pg_advisory_xact_lock(:key)", {"key": LOCK_KEY})
                yield
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(DatabaseError):  # the block's own error matters
                    self._db.execute("ROLLBACK")
                for undo in self._after_rollback:
                    undo()
                raise
            committed = self._after_commit
        finally:
            self._after_commit = None
            self._after_rollback = []
        for change in committed:
            change()

    @property
    def open(self) -> bool:
        """Whether a transaction is open (statements now join it)."""
        return self._after_commit is not None

    def after_commit(self, change: Callable[[], None]) -> None:
        """Run ``change`` once the open transaction commits (at once when none is open)."""
        if self._after_commit is None:
            change()
        else:
            self._after_commit.append(change)

    def after_rollback(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` if the open transaction rolls back (never when none is open: a
        statement outside a transaction has committed or failed by the time this is called)."""
        if self._after_commit is not None:
            self._after_rollback.append(undo)
