"""Which run each stored object belongs to, and which node may read it.

Caller: the link's object ledger (:mod:`flwrmtls.runs.linkobjects`), which keeps the rules; this
module only stores them. One file per object stays in the store (content addressing): the
same bytes in two runs are one file with two rows in ``run_objects``.

* ``run_objects`` (run, object, charged bytes): the object belongs to the run; it counts
  that much against the run's quota, and the run's ServerApp may read it.
* ``node_objects`` (node, object, run): the node may read the object, for that run.
* ``pending_objects`` (node, object, charged bytes, expires at): the node uploaded the object
  and no reply of it names it yet. In the database, not in one link process's memory: the
  reply that names it may reach another link process of the same database.

Both lose a run's rows when the run ends (:meth:`ObjectTable.release_run`, in the
transaction that ends the run), and at start-up every row of a run that is not active goes
(:meth:`ObjectTable.release_inactive_runs`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping

from flwrmtls.state.database import Database
from flwrmtls.state.runtable import ACTIVE_RUN_IDS
from flwrmtls.state.transaction import Transactions

__all__ = ["ObjectTable"]

_BATCH = 500
"""Ids per ``IN (...)`` query (SQLite's variable limit is 999 on old builds)."""


def _batches(items: Collection[str]) -> Iterator[list[str]]:
    values = list(items)
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


class ObjectTable:
    def __init__(self, db: Database, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)

    def of_run(self, run_id: int, object_ids: Collection[str]) -> set[str]:
        """Those of ``object_ids`` that belong to ``run_id``."""
        found: set[str] = set()
        for batch in _batches(object_ids):
            found.update(
                row[0]
                for row in self._db.execute(
                    "SELECT object_id FROM run_objects WHERE run_id = :run AND object_id IN :ids",
                    {"run": run_id, "ids": batch},
                )
            )
        return found

    def of_node(self, node_id: int, object_ids: Collection[str]) -> set[str]:
        """Those of ``object_ids`` that ``node_id`` may read (for any run)."""
        found: set[str] = set()
        for batch in _batches(object_ids):
            found.update(
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT object_id FROM node_objects "
                    "WHERE node_id = :node AND object_id IN :ids",
                    {"node": node_id, "ids": batch},
                )
            )
        return found

    def held(self, object_ids: Collection[str]) -> set[str]:
        """Those of ``object_ids`` that belong to some run."""
        found: set[str] = set()
        for batch in _batches(object_ids):
            found.update(
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT object_id FROM run_objects WHERE object_id IN :ids",
                    {"ids": batch},
                )
            )
        return found

    def all_held(self) -> set[str]:
        """Every object that belongs to some run."""
        return {row[0] for row in self._db.execute("SELECT DISTINCT object_id FROM run_objects")}

    def run_bytes(self, run_id: int) -> int:
        """The bytes charged for the objects of ``run_id`` (each object once)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(charged_bytes), 0) FROM run_objects WHERE run_id = :run",
            {"run": run_id},
        ).one()
        return int(row[0])

    def add(
        self, run_id: int, charges: Mapping[str, int], grants: Iterable[tuple[int, str]] = ()
    ) -> None:
        """Make ``charges``' objects belong to ``run_id`` (each charged its bytes) and let
        each (node, object) of ``grants`` be read by its node for the run, in one
        transaction."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO run_objects (run_id, object_id, charged_bytes) "
                "VALUES (:run, :object, :charge) ON CONFLICT DO NOTHING",
                [{"run": run_id, "object": i, "charge": c} for i, c in charges.items()],
            )
            self._db.execute(
                "INSERT INTO node_objects (node_id, object_id, run_id) "
                "VALUES (:node, :object, :run) ON CONFLICT DO NOTHING",
                [{"node": node_id, "object": i, "run": run_id} for node_id, i in grants],
            )

    def release_run(self, run_id: int) -> set[str]:
        """Forget ``run_id``'s rows; returns its objects that now belong to no run."""
        with self._transaction():
            objects = {
                row[0]
                for row in self._db.execute(
                    "SELECT object_id FROM run_objects WHERE run_id = :run", {"run": run_id}
                )
            }
            self._db.execute("DELETE FROM run_objects WHERE run_id = :run", {"run": run_id})
            self._db.execute("DELETE FROM node_objects WHERE run_id = :run", {"run": run_id})
        return objects - self.held(objects)

    # --- a node's uploads that no reply names yet ----------------------------------------------

    def add_pending(self, node_id: int, object_id: str, charged: int, expires_at: float) -> None:
        """Node ``node_id`` uploaded ``object_id`` (again: its charge and expiry renewed)."""
        self._db.execute(
            "INSERT INTO pending_objects (node_id, object_id, charged_bytes, expires_at) "
            "VALUES (:node, :object, :charged, :expires) ON CONFLICT (node_id, object_id) "
            "DO UPDATE SET charged_bytes = excluded.charged_bytes, "
            "expires_at = excluded.expires_at",
            {"node": node_id, "object": object_id, "charged": charged, "expires": expires_at},
        )

    def pending_of(self, node_id: int, object_ids: Collection[str]) -> dict[str, int]:
        """Those of ``object_ids`` node ``node_id`` has pending, with their charges."""
        found: dict[str, int] = {}
        for batch in _batches(object_ids):
            found.update(
                (str(row[0]), int(row[1]))
                for row in self._db.execute(
                    "SELECT object_id, charged_bytes FROM pending_objects "
                    "WHERE node_id = :node AND object_id IN :ids",
                    {"node": node_id, "ids": batch},
                )
            )
        return found

    def pending_total(self, node_id: int) -> tuple[int, int]:
        """(uploads, bytes charged) node ``node_id`` has pending."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(charged_bytes), 0) FROM pending_objects "
            "WHERE node_id = :node",
            {"node": node_id},
        ).one()
        return int(row[0]), int(row[1])

    def release_pending(self, node_id: int, object_ids: Collection[str]) -> None:
        """A reply of node ``node_id`` named ``object_ids``: no longer pending."""
        for batch in _batches(object_ids):
            self._db.execute(
                "DELETE FROM pending_objects WHERE node_id = :node AND object_id IN :ids",
                {"node": node_id, "ids": batch},
            )

    def expire_pending(self, now: float) -> set[str]:
        """Forget the uploads whose time ran out; returns their objects."""
        with self._transaction():
            expired = {
                str(row[0])
                for row in self._db.execute(
                    "SELECT object_id FROM pending_objects WHERE expires_at <= :now", {"now": now}
                )
            }
            if expired:
                self._db.execute(
                    "DELETE FROM pending_objects WHERE expires_at <= :now", {"now": now}
                )
        return expired

    def pending_any(self, object_ids: Collection[str]) -> set[str]:
        """Those of ``object_ids`` some node has pending."""
        found: set[str] = set()
        for batch in _batches(object_ids):
            found.update(
                str(row[0])
                for row in self._db.execute(
                    "SELECT DISTINCT object_id FROM pending_objects WHERE object_id IN :ids",
                    {"ids": batch},
                )
            )
        return found

    def all_pending(self) -> set[str]:
        """Every object some node has pending."""
        return {
            str(row[0])
            for row in self._db.execute("SELECT DISTINCT object_id FROM pending_objects")
        }

    def release_inactive_runs(self) -> int:
        """Link start-up: forget the rows of runs that are not active; returns how many."""
        with self._transaction():
            removed = 0
            for table in ("run_objects", "node_objects"):
                result = self._db.execute(
                    f"DELETE FROM {table} WHERE run_id NOT IN ({ACTIVE_RUN_IDS})"
                )
                removed += result.rowcount
        return removed
