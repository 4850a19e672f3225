"""The audit trail: Control calls, node admissions and refusals, as the interceptors saw them.

Rules:

* What is recorded is decided by :mod:`flwrmtls.auth.audit`; this table stores what it is
  given, in arrival order (``seq``), and never changes an entry.
* It stays bounded: every ``prune_every`` records, the entries older than the newest
  ``max_entries`` are deleted (one indexed DELETE), so the trail of a busy link keeps its
  recent history and the database does not grow without end.
* Read newest first, optionally only one identity's entries (indexed).

Callers: the link's interceptors (:meth:`AuditTable.record`, passed as their ``audit`` sink),
the Control servicer (:meth:`AuditTable.entries`, for ``flwrmtls audit``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from flwrmtls.auth.audit import AuditRecord

__all__ = ["DEFAULT_MAX_ENTRIES", "AuditEntry", "AuditTable"]

DEFAULT_MAX_ENTRIES = 100_000
"""Entries kept; older ones are deleted as new ones arrive."""

_COLUMNS = "timestamp, identity, auth_method, method, outcome, detail, peer"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    """Position in the trail: larger is newer."""
    record: AuditRecord


class AuditTable:
    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        prune_every: int = 1_000,
    ) -> None:
        if max_entries < 1 or prune_every < 1:
            raise ValueError("max_entries and prune_every must be positive")
        self._db = db
        self._max_entries = max_entries
        self._prune_every = prune_every
        self._since_prune = 0

    def record(self, record: AuditRecord) -> None:
        """Interceptors (the ``audit`` sink): append one entry; now and then prune old ones."""
        with self._db:
            self._db.execute(
                f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.timestamp,
                    record.identity,
                    record.auth_method,
                    record.method,
                    record.outcome,
                    record.detail,
                    record.peer,
                ),
            )
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self._since_prune = 0
            self.prune()

    def prune(self) -> None:
        """Delete the entries older than the newest ``max_entries``."""
        with self._db:
            self._db.execute(
                "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                (self._max_entries,),
            )

    def entries(self, limit: int = 100, identity: str = "") -> list[AuditEntry]:
        """Control servicer: the newest ``limit`` entries, newest first; with ``identity``
        only that identity's."""
        where, parameters = ("WHERE identity = ? ", (identity,)) if identity else ("", ())
        rows = self._db.execute(
            f"SELECT seq, {_COLUMNS} FROM audit {where}ORDER BY seq DESC LIMIT ?",
            (*parameters, limit),
        ).fetchall()
        return [
            AuditEntry(
                seq=row[0],
                record=AuditRecord(
                    timestamp=row[1],
                    identity=row[2],
                    auth_method=row[3],
                    method=row[4],
                    outcome=row[5],
                    detail=row[6],
                    peer=row[7],
                ),
            )
            for row in rows
        ]
