"""The link processes serving one database (replicas), and who runs each run's ServerApp.

Rules:

* Each link process is a replica with a random id, a row in ``link_replicas`` from its start
  to its stop, and an ``alive_until`` it renews every ``RENEW_EVERY`` seconds to now +
  ``REPLICA_TTL``. A replica whose ``alive_until`` has passed is lost (killed, its host gone,
  its database connection cut for longer than the TTL).
* A run's ServerApp runs beside exactly one replica: the one that accepted StartRun
  (``runs.replica_id``). Its lease on the run is that replica's liveness: there is no lease
  per run to renew.
* When a replica is lost, any live replica (:meth:`ReplicaTable.lost`, every
  ``RENEW_EVERY`` seconds) ends its active runs ``failed`` with the reason
  ``LOST_REASON``, in one transaction, and deletes its row: a run whose replica dies has
  ended, recorded, within ``REPLICA_TTL + RENEW_EVERY`` seconds. Runs are failed, not taken
  over: the ServerApp's memory (its strategy, the round it is in) died with its process, and
  starting it again would run the app twice.
* A replica that finds itself declared lost (its row is gone when it renews) registers again;
  its runs have ended by then, and it stops their processes when the announcement arrives.
* On SQLite (one link) the same rows exist; there are never others: a row another process
  left is that of a link that died (SIGKILL, a lost host) and is never taken for a live one,
  whatever its ``alive_until`` says, so a link restarted at once still marks the nodes
  offline and deletes the files no run holds.
"""

from __future__ import annotations

from flwrmtls.state.database import Database
from flwrmtls.state.runtable import ACTIVE_RUN_IDS
from flwrmtls.state.transaction import Transactions

__all__ = ["LOST_REASON", "RENEW_EVERY", "REPLICA_TTL", "ReplicaTable"]

REPLICA_TTL = 10.0
"""Seconds a replica stays alive without renewing."""
RENEW_EVERY = 2.0
"""Seconds between two renewals (and two looks for lost replicas)."""
LOST_REASON = "link replica lost"
"""The reason a run ends with when the replica running its ServerApp is lost."""


class ReplicaTable:
    def __init__(self, db: Database, transactions: Transactions) -> None:
        self._db = db
        self._transaction = transactions

    def join(self, replica_id: str, description: str, *, now: float) -> None:
        """This replica starts (or finds itself declared lost): alive until now + TTL."""
        self._db.execute(
            "INSERT INTO link_replicas (replica_id, description, started_at, alive_until) "
            "VALUES (:id, :description, :now, :until) ON CONFLICT (replica_id) DO UPDATE "
            "SET alive_until = excluded.alive_until",
            {"id": replica_id, "description": description, "now": now, "until": now + REPLICA_TTL},
        )

    def renew(self, replica_id: str, *, now: float) -> bool:
        """Keep this replica alive; False if its row was gone (it had been declared lost)."""
        result = self._db.execute(
            "UPDATE link_replicas SET alive_until = :until WHERE replica_id = :id",
            {"id": replica_id, "until": now + REPLICA_TTL},
        )
        return bool(result.rowcount)

    def leave(self, replica_id: str) -> None:
        """This replica stops (its runs have ended)."""
        self._db.execute("DELETE FROM link_replicas WHERE replica_id = :id", {"id": replica_id})

    def others_alive(self, replica_id: str, *, now: float) -> int:
        """How many other replicas are alive now: none on SQLite, where a row that is not
        this process's was left by a link that died (it never left), however recently."""
        if not self._db.shared:
            return 0
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM link_replicas WHERE replica_id != :id AND alive_until > :now",
                {"id": replica_id, "now": now},
            ).scalar_one()
        )

    def alive(self, *, now: float) -> list[tuple[str, str, float]]:
        """(id, description, started at) of every replica alive now."""
        rows = self._db.execute(
            "SELECT replica_id, description, started_at FROM link_replicas "
            "WHERE alive_until > :now ORDER BY started_at",
            {"now": now},
        )
        return [(str(row[0]), str(row[1]), float(row[2])) for row in rows]

    def lost(self, *, now: float) -> list[str]:
        """The replicas whose lease has passed (the caller ends their runs, then calls
        :meth:`forget` in the same transaction)."""
        rows = self._db.execute(
            "SELECT replica_id FROM link_replicas WHERE alive_until <= :now", {"now": now}
        )
        return [str(row[0]) for row in rows]

    def orphaned_runs(self, *, now: float) -> list[int]:
        """Active runs whose replica is not alive (lost, or gone without a row)."""
        rows = self._db.execute(
            f"SELECT run_id FROM runs WHERE run_id IN ({ACTIVE_RUN_IDS}) AND replica_id NOT IN "
            "(SELECT replica_id FROM link_replicas WHERE alive_until > :now) ORDER BY run_id",
            {"now": now},
        )
        return [int(row[0]) for row in rows]

    def forget(self, replica_ids: list[str]) -> None:
        if replica_ids:
            self._db.execute(
                "DELETE FROM link_replicas WHERE replica_id IN :ids", {"ids": replica_ids}
            )
