"""Messages between the ServerApp side (node 0) and nodes, stored as serialized protos.

Callers: the ServerAppIo servicer pushes instructions and pulls replies; the Fleet servicer
hands instructions out to nodes, records their acknowledgements and stores their replies.

Delivery is at least once, with acknowledgement. A message is *deliverable* to its node while
it has not expired, has no reply (the node's, or the error reply the link made for a node that
went offline: a message the link answered is never handed out again), has not been
acknowledged, and is not under a lease:

================================  ==========================================================
event                             effect on the message
================================  ==========================================================
stored (a ServerApp's push)       deliverable
handed out (:meth:`deliver`)      leased: delivered_at = now, leased_until = now + lease;
                                  deliverable again once the lease has passed without an
                                  acknowledgement
acknowledged (:meth:`acknowledge` acked_at = now: never handed out again
by its own node)
its node activates again          every lease of the node ends (:meth:`release_leases`,
                                  leased_until = NULL):
                                  what the old session was handed and did not acknowledge
                                  is deliverable again
a reply is stored                 never handed out again
its run ends                      deleted
================================  ==========================================================

A node can acknowledge only messages addressed to it that it was handed: an id of another
node's message (or of none) changes nothing, and nothing tells the caller which ids matched.

A push is stored whole or not at all, and a delivery leases every message it returns or none
(one transaction each, :mod:`flwrmtls.state.transaction`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwrmtls.state.database import Database
from flwrmtls.state.runtable import ACTIVE_RUN_IDS
from flwrmtls.state.transaction import Transactions

__all__ = ["MessageRow", "MessageTable"]


@dataclass(frozen=True, slots=True)
class MessageRow:
    message_id: str
    run_id: int
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    created_at: float
    expires_at: float
    proto: bytes


class MessageTable:
    def __init__(self, db: Database, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)

    def store(self, rows: Iterable[MessageRow]) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO messages (message_id, run_id, src_node_id, dst_node_id, "
                "reply_to_message_id, created_at, expires_at, proto, seq) VALUES (:id, :run, "
                ":src, :dst, :reply_to, :created, :expires, :proto, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages))",
                [{"id": r.message_id, "run": r.run_id, "src": r.src_node_id,
                  "dst": r.dst_node_id, "reply_to": r.reply_to_message_id,
                  "created": r.created_at, "expires": r.expires_at, "proto": r.proto}
                 for r in rows],
            )  # fmt: skip

    def deliver(self, node_id: int, *, now: float, limit: int, lease: float) -> list[bytes]:
        """Deliverable messages for ``node_id`` (oldest first), leased until ``now + lease``."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT message_id, proto FROM messages AS m WHERE dst_node_id = :node "
                "AND acked_at IS NULL AND (leased_until IS NULL OR leased_until <= :now) "
                "AND expires_at > :now AND NOT EXISTS "
                "(SELECT 1 FROM messages AS r WHERE r.reply_to_message_id = m.message_id) "
                "ORDER BY created_at, seq LIMIT :limit",
                {"node": node_id, "now": now, "limit": limit},
            ).fetchall()
            if rows:
                self._db.execute(
                    "UPDATE messages SET delivered_at = :now, leased_until = :until "
                    "WHERE message_id IN :ids",
                    {"now": now, "until": now + lease, "ids": [row[0] for row in rows]},
                )
        return [bytes(row[1]) for row in rows]

    def acknowledge(self, node_id: int, message_ids: Iterable[str], *, now: float) -> int:
        """Mark as delivered those of ``message_ids`` that were handed out to ``node_id``;
        returns how many changed (for tests: callers tell the node nothing)."""
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return 0
        result = self._db.execute(
            "UPDATE messages SET acked_at = :now WHERE message_id IN :ids "
            "AND dst_node_id = :node AND delivered_at IS NOT NULL AND acked_at IS NULL",
            {"now": now, "ids": ids, "node": node_id},
        )
        return result.rowcount

    def release_leases(self, node_id: int) -> None:
        """End every lease of ``node_id``'s unacknowledged messages (it activated again)."""
        self._db.execute(
            "UPDATE messages SET leased_until = NULL WHERE dst_node_id = :node "
            "AND acked_at IS NULL AND leased_until IS NOT NULL",
            {"node": node_id},
        )

    def get(self, message_ids: Iterable[str]) -> dict[str, MessageRow]:
        ids = list(message_ids)
        if not ids:
            return {}
        rows = self._db.execute(
            "SELECT message_id, run_id, src_node_id, dst_node_id, reply_to_message_id, "
            "created_at, expires_at, proto FROM messages WHERE message_id IN :ids",
            {"ids": ids},
        ).fetchall()
        return {
            row[0]: MessageRow(
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], bytes(row[7])
            )
            for row in rows
        }

    def replies_to(self, message_ids: Iterable[str]) -> dict[str, bytes]:
        """reply_to_message_id -> the reply's proto, for those that have one."""
        ids = list(message_ids)
        if not ids:
            return {}
        rows = self._db.execute(
            "SELECT reply_to_message_id, proto FROM messages WHERE reply_to_message_id IN :ids",
            {"ids": ids},
        ).fetchall()
        return {row[0]: bytes(row[1]) for row in rows}

    def replies_after(self, run_id: int, after: int) -> list[tuple[int, bytes]]:
        """(position, proto) of the run's replies stored after position ``after``, in order.

        The position is the row's ``seq``: it only grows while the run's earlier rows exist (a
        new row gets the largest + 1, in the transaction that stores it, which on a shared
        database holds the one lock), so a cursor never skips or repeats a reply.
        """
        rows = self._db.execute(
            "SELECT seq, proto FROM messages WHERE run_id = :run AND seq > :after "
            "AND reply_to_message_id != '' ORDER BY seq",
            {"run": run_id, "after": after},
        ).fetchall()
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def unanswered(self, run_id: int, *, now: float) -> list[MessageRow]:
        """The run's messages to nodes that have no reply yet (and have not expired)."""
        rows = self._db.execute(
            "SELECT message_id, run_id, src_node_id, dst_node_id, reply_to_message_id, "
            "created_at, expires_at, proto FROM messages AS m "
            "WHERE run_id = :run AND reply_to_message_id = '' AND dst_node_id != 0 "
            "AND expires_at > :now AND NOT EXISTS "
            "(SELECT 1 FROM messages AS r WHERE r.reply_to_message_id = m.message_id)",
            {"run": run_id, "now": now},
        ).fetchall()
        return [
            MessageRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bytes(row[7]))
            for row in rows
        ]

    def sent_to(self, run_id: int, node_id: int) -> bool:
        """Whether ``run_id`` has sent any message to ``node_id``."""
        row = self._db.execute(
            "SELECT 1 FROM messages WHERE run_id = :run AND dst_node_id = :node LIMIT 1",
            {"run": run_id, "node": node_id},
        ).first()
        return row is not None

    def taken(self, message_ids: Iterable[str]) -> list[str]:
        """Those of ``message_ids`` that a stored message already has."""
        ids = list(message_ids)
        if not ids:
            return []
        rows = self._db.execute(
            "SELECT message_id FROM messages WHERE message_id IN :ids", {"ids": ids}
        ).fetchall()
        return [str(row[0]) for row in rows]

    def delete_run(self, run_id: int) -> None:
        """A run's end (in its transaction): its messages go."""
        self._db.execute("DELETE FROM messages WHERE run_id = :run", {"run": run_id})

    def delete_inactive_runs(self) -> int:
        """Link start-up: delete the messages of runs that are not active; returns how many."""
        result = self._db.execute(f"DELETE FROM messages WHERE run_id NOT IN ({ACTIVE_RUN_IDS})")
        return result.rowcount
