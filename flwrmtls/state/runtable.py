"""Runs, their status history, logs, results and app-process token hashes.

Callers: the Control servicer (create, list, stop, logs), the link's run manager (status,
logs, tokens), the ServerAppIo servicer (result, tokens), the Fleet servicer (ended runs).
Tokens are stored only as their SHA-256; see :mod:`flwrmtls.auth.tokens`.

Creating a run and moving it are each one transaction (:mod:`flwrmtls.state.transaction`):
a run exists with its first history entry or not at all, and a run that ends has, in the
same commit, its new status, its history entry and no token left. The in-memory token
mirror changes only once that commit is done.

Only the tokens of active runs (``pending``, ``running``) are ever mirrored: a token whose run
has ended is never loaded, whatever the database holds (an older link committed a run's end
and the deletion of its tokens apart, so a crash between the two left the token), and
:meth:`RunTable.drop_inactive_tokens` deletes such rows at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flwrmtls.state.database import Database
from flwrmtls.state.runlifecycle import FINAL_STATUSES, RunStatus, check_transition
from flwrmtls.state.transaction import Transactions

__all__ = ["ACTIVE_RUN_IDS", "LogRecord", "RunRecord", "RunTable"]

_ACTIVE = tuple(status.value for status in RunStatus if status not in FINAL_STATUSES)
ACTIVE_RUN_IDS = (
    "SELECT run_id FROM runs WHERE status IN (" + ", ".join(f"'{s}'" for s in _ACTIVE) + ")"
)
"""SQL: the ids of the runs that have not ended (a sub-query for the other tables)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: int
    app_name: str
    app_version: str
    bundle_hash: str
    run_config_json: str
    owner: str
    status: RunStatus
    reason: str
    created_at: float
    started_at: float
    finished_at: float
    result_json: str

    @property
    def ended(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def run_config(self) -> dict[str, bool | int | float | str]:
        config: dict[str, bool | int | float | str] = json.loads(self.run_config_json)
        return config


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    run_id: int
    timestamp: float
    source: str
    text: str


_RUN_COLUMNS = (
    "run_id, app_name, app_version, bundle_hash, run_config_json, owner, status, reason, "
    "created_at, started_at, finished_at, result_json"
)

_HISTORY = (
    "INSERT INTO run_status_history (run_id, status, reason, at, seq) VALUES (:run_id, "
    ":status, :reason, :now, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_status_history "
    "WHERE run_id = :run_id))"
)
"""A run's next history entry (always in a transaction: the numbers follow one another)."""


def _run(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[6] = RunStatus(str(values[6]))
    return RunRecord(*values)


class RunTable:
    def __init__(self, db: Database, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)
        self.replica_id = ""
        """The link process whose runs these are (several links: see linkstate)."""
        # Token hashes are checked on every AppIo call: mirrored in memory, so a check is a
        # dict lookup, not a query. Only the process that started a run's ServerApp adds its
        # tokens (its ServerAppIo is on loopback); another link ending the run tells it
        # (:meth:`forget_ended`).
        self._tokens: dict[bytes, tuple[bytes, int, str]] = {
            bytes(row[0]): (bytes(row[0]), int(row[1]), str(row[2]))
            for row in db.execute(
                "SELECT token_hash, run_id, kind FROM run_tokens "
                f"WHERE run_id IN ({ACTIVE_RUN_IDS})"
            )
        }

    def create(
        self,
        *,
        app_name: str,
        app_version: str,
        bundle_hash: str,
        run_config_json: str,
        owner: str,
        now: float,
    ) -> int:
        with self._transaction():
            run_id = int(
                self._db.execute(
                    "INSERT INTO runs (app_name, app_version, bundle_hash, run_config_json, "
                    "owner, status, created_at, replica_id) VALUES (:app_name, :app_version, "
                    ":bundle_hash, :config, :owner, :status, :now, :replica) RETURNING run_id",
                    {
                        "app_name": app_name, "app_version": app_version,
                        "bundle_hash": bundle_hash, "config": run_config_json, "owner": owner,
                        "status": RunStatus.PENDING.value, "now": now, "replica": self.replica_id,
                    },
                ).scalar_one()
            )  # fmt: skip
            self._db.execute(_HISTORY, {"run_id": run_id, "status": RunStatus.PENDING.value,
                                        "reason": "", "now": now})  # fmt: skip
        return run_id

    def get(self, run_id: int) -> RunRecord | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = :run_id", {"run_id": run_id}
        ).first()
        return None if row is None else _run(row)

    def all(self) -> list[RunRecord]:
        rows = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY run_id").fetchall()
        return [_run(row) for row in rows]

    def active(self) -> list[RunRecord]:
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE status NOT IN :finals ORDER BY run_id",
            {"finals": sorted(s.value for s in FINAL_STATUSES)},
        ).fetchall()
        return [_run(row) for row in rows]

    def holders(self) -> dict[int, str]:
        """Active run id -> the link process whose ServerApp runs it ("" for none yet)."""
        rows = self._db.execute(
            f"SELECT run_id, replica_id FROM runs WHERE run_id IN ({ACTIVE_RUN_IDS})"
        )
        return {int(row[0]): str(row[1]) for row in rows}

    def transition(self, run_id: int, status: RunStatus, reason: str, now: float) -> RunRecord:
        """Move a run to ``status`` in one transaction (IllegalTransition, or any failure of
        the database, leaves it as it was)."""
        with self._transaction():
            current = self.get(run_id)
            if current is None:
                raise KeyError(run_id)
            check_transition(run_id, current.status, status)
            started = now if status is RunStatus.RUNNING else current.started_at
            finished = now if status in FINAL_STATUSES else 0.0
            self._db.execute(
                "UPDATE runs SET status = :status, reason = :reason, started_at = :started, "
                "finished_at = :finished WHERE run_id = :run_id",
                {"status": status.value, "reason": reason, "started": started,
                 "finished": finished, "run_id": run_id},
            )  # fmt: skip
            self._db.execute(
                _HISTORY, {"run_id": run_id, "status": status.value, "reason": reason, "now": now}
            )
            if status in FINAL_STATUSES:
                self._db.execute("DELETE FROM run_tokens WHERE run_id = :r", {"r": run_id})
                self._db.publish("run-ended", run_id)
                self._transaction.after_commit(lambda: self._forget_tokens(run_id))
        updated = self.get(run_id)
        assert updated is not None
        return updated

    def suspend_tokens(self, run_id: int) -> None:
        """The run's process is gone but its end could not be recorded (the database
        failed): its tokens stop working now. The database keeps them until the end is
        recorded, at the latest when the link restarts and fails the run."""
        self._forget_tokens(run_id)

    def forget_ended(self, run_id: int) -> None:
        """Another link process ended the run: its tokens stop working here too."""
        self._forget_tokens(run_id)

    def _forget_tokens(self, run_id: int) -> None:
        self._tokens = {h: t for h, t in self._tokens.items() if t[1] != run_id}

    def history(self, run_id: int) -> list[tuple[RunStatus, str, float]]:
        rows = self._db.execute(
            "SELECT status, reason, at FROM run_status_history WHERE run_id = :run_id ORDER BY at",
            {"run_id": run_id},
        ).fetchall()
        return [(RunStatus(row[0]), str(row[1]), float(row[2])) for row in rows]

    def set_result(self, run_id: int, result_json: str) -> None:
        self._db.execute(
            "UPDATE runs SET result_json = :result WHERE run_id = :run_id",
            {"result": result_json, "run_id": run_id},
        )

    # --- logs ------------------------------------------------------------------------------

    def add_log(self, run_id: int, source: str, text: str, now: float) -> int:
        # In a transaction: several links take one lock for it, so lines commit in the order
        # of their numbers and a reader following ``seq`` never passes one still to commit.
        with self._transaction():
            return int(
                self._db.execute(
                    "INSERT INTO run_logs (run_id, timestamp, source, text) "
                    "VALUES (:run_id, :now, :source, :text) RETURNING seq",
                    {"run_id": run_id, "now": now, "source": source, "text": text},
                ).scalar_one()
            )

    def logs_after(self, run_id: int, after_seq: int, limit: int = 1000) -> list[LogRecord]:
        rows = self._db.execute(
            "SELECT seq, run_id, timestamp, source, text FROM run_logs "
            "WHERE run_id = :run_id AND seq > :after ORDER BY seq LIMIT :limit",
            {"run_id": run_id, "after": after_seq, "limit": limit},
        ).fetchall()
        return [LogRecord(*row) for row in rows]

    # --- tokens (hashes only) --------------------------------------------------------------

    def add_token(self, token_hash: bytes, run_id: int, kind: str) -> None:
        self._db.execute(
            "INSERT INTO run_tokens (token_hash, run_id, kind) VALUES (:hash, :run_id, :kind)",
            {"hash": token_hash, "run_id": run_id, "kind": kind},
        )
        entry = (token_hash, run_id, kind)

        def remember() -> None:
            self._tokens[token_hash] = entry

        self._transaction.after_commit(remember)

    def drop_inactive_tokens(self) -> int:
        """Link start-up: delete the tokens of runs that are not active (none is mirrored);
        returns how many there were."""
        result = self._db.execute(f"DELETE FROM run_tokens WHERE run_id NOT IN ({ACTIVE_RUN_IDS})")
        return result.rowcount

    def token(self, token_hash: bytes) -> tuple[bytes, int, str] | None:
        """(stored hash, run id, kind) of a live run's token (a dict lookup)."""
        return self._tokens.get(token_hash)
