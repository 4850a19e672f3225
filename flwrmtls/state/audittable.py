"""The audit trail: Control calls, node admissions and refusals, as the interceptors saw them.

Rules:

* What is recorded is decided by :mod:`flwrmtls.auth.audit`; this table stores what it is
  given, in arrival order (``seq``), and never changes an entry.
* It stays bounded per retention class (:class:`~flwrmtls.auth.audit.Retention`): every
  ``prune_every`` records, each class's entries older than its newest ``limits[class]`` are
  deleted (one indexed DELETE per class). One class filling up never deletes another's
  entries: a user listing runs in a loop cannot push the record of a run they started out,
  nor a flood of refusals an admission. The database holds at most the sum of the limits
  (1,400,000 entries by default, a few hundred bytes each) plus ``prune_every``.
* Read newest first, optionally only one identity's entries (indexed).
* Recording is one statement, committed on its own; a prune (one DELETE per class) is one
  transaction of its own, deliberately not the new entry's: a prune that fails must not take
  the new entry with it.

Callers: the link's interceptors (:meth:`AuditTable.record`, passed as their ``audit`` sink),
the Control servicer (:meth:`AuditTable.entries`, for ``flwrmtls audit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwrmtls.auth.audit import AuditRecord, Retention
from flwrmtls.state.database import Database
from flwrmtls.state.transaction import Transactions

__all__ = ["DEFAULT_LIMITS", "DEFAULT_MAX_ENTRIES", "AuditEntry", "AuditTable"]

DEFAULT_MAX_ENTRIES = 100_000
"""The most entries ``ListAudit`` returns at once."""

DEFAULT_LIMITS: Mapping[Retention, int] = {
    Retention.CHANGE: 1_000_000,
    Retention.ADMISSION: 100_000,
    Retention.READ: 100_000,
    Retention.REFUSAL: 100_000,
    Retention.ENROLLMENT: 100_000,
}
"""Entries kept per retention class; older ones are deleted as new ones arrive."""

_COLUMNS = "timestamp, identity, auth_method, method, outcome, detail, peer, retention"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    """Position in the trail: larger is newer."""
    record: AuditRecord


class AuditTable:
    def __init__(
        self,
        db: Database,
        *,
        limits: Mapping[Retention, int] = DEFAULT_LIMITS,
        max_entries: int | None = None,
        prune_every: int | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        """``max_entries``: the same limit for every class (instead of ``limits``).
        ``prune_every``: records between prunes; by default a tenth of the smallest limit, at
        most 1,000, so a class overshoots its limit by at most that."""
        if max_entries is not None:
            limits = dict.fromkeys(Retention, max_entries)
        if prune_every is None:
            prune_every = max(1, min(1_000, min(limits.values(), default=1) // 10))
        if set(limits) != set(Retention) or min(limits.values()) < 1 or prune_every < 1:
            raise ValueError("every retention class needs a positive limit; prune_every too")
        self._db = db
        self._transaction = transactions or Transactions(db)
        self._limits = dict(limits)
        self._prune_every = prune_every
        self._since_prune = 0

    def record(self, record: AuditRecord) -> None:
        """Interceptors (the ``audit`` sink): append one entry; now and then prune old ones."""
        self._db.execute(
            f"INSERT INTO audit ({_COLUMNS}) VALUES (:timestamp, :identity, :auth_method, "
            ":method, :outcome, :detail, :peer, :retention)",
            {
                "timestamp": record.timestamp,
                "identity": record.identity,
                "auth_method": record.auth_method,
                "method": record.method,
                "outcome": record.outcome,
                "detail": record.detail,
                "peer": record.peer,
                "retention": record.retention.value,
            },
        )
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self._since_prune = 0
            self.prune()

    def prune(self) -> None:
        """Delete each class's entries older than its newest ``limits[class]`` (one
        transaction)."""
        with self._transaction():
            for retention, limit in self._limits.items():
                self._db.execute(
                    "DELETE FROM audit WHERE retention = :retention AND seq < (SELECT seq "
                    "FROM audit WHERE retention = :retention ORDER BY seq DESC LIMIT 1 "
                    "OFFSET :keep)",
                    {"retention": retention.value, "keep": limit - 1},
                )

    def entries(self, limit: int = 100, identity: str = "") -> list[AuditEntry]:
        """Control servicer: the newest ``limit`` entries, newest first; with ``identity``
        only that identity's."""
        where = "WHERE identity = :identity " if identity else ""
        rows = self._db.execute(
            f"SELECT seq, {_COLUMNS} FROM audit {where}ORDER BY seq DESC LIMIT :limit",
            {"identity": identity, "limit": limit},
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
                    retention=Retention(row[8]),
                ),
            )
            for row in rows
        ]
