"""The link's state in one SQLite file: nodes, their sessions, and messages.

Node lifecycle (status is derived, never stored):

====================  ==========================================  ===========
event                 effect                                      status
====================  ==========================================  ===========
ActivateNode          row created or updated; new session_id;     online
                      online_until = now + grace * interval
Heartbeat             online_until = now + grace * interval       online
DeactivateNode        session cleared; online_until = now         offline
no heartbeat          online_until passes                         offline
link restart          rows and sessions kept                      unchanged
====================  ==========================================  ===========

Two live connections with the same identity: the newest activation wins. Its session id
replaces the older one, whose next call gets :class:`SessionSuperseded` and stops (a node
restarted elsewhere, or a copied certificate, cannot run twice under one identity).

Every method says which caller uses it. Times are seconds since the epoch (float).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flwrmtls.errors import InputError
from flwrmtls.state.schema import migrate

__all__ = [
    "HEARTBEAT_GRACE",
    "LinkState",
    "NodeRecord",
    "SessionSuperseded",
    "StoredMessage",
    "UnknownSession",
]

HEARTBEAT_GRACE = 2.5
"""A node is offline after this many heartbeat intervals without a heartbeat."""


class UnknownSession(Exception):
    """The session id names no live session (the node must activate again)."""


class SessionSuperseded(Exception):
    """A newer activation of the same identity replaced this session."""

    def __init__(self, peer_address: str) -> None:
        super().__init__(peer_address)
        self.peer_address = peer_address


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: int
    identity: str
    organisation: str
    auth_method: str
    cert_fingerprint: str
    cert_not_after: float
    online: bool
    last_seen: float
    created_at: float
    peer_address: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    message_id: str
    run_id: int
    src_node_id: int
    dst_node_id: int
    message_type: str
    reply_to_message_id: str
    content: bytes
    created_at: float
    ttl: float


class LinkState:
    def __init__(self, database: str | Path) -> None:
        self.path = str(database)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db, self.path)
        except sqlite3.DatabaseError as error:
            raise InputError(
                f"cannot open database {self.path}: {error}: check --database"
            ) from None

    def close(self) -> None:
        self._db.close()

    # --- Fleet servicer -------------------------------------------------------------------

    def activate_node(
        self,
        *,
        node_id: int | None,
        identity: str,
        organisation: str,
        auth_method: str,
        cert_fingerprint: str,
        cert_not_after: float,
        peer_address: str,
        now: float,
        heartbeat_interval: float,
    ) -> tuple[int, str]:
        """Start a session; ``node_id`` None (no client auth) assigns a fresh random one."""
        session_id = secrets.token_hex(16)
        online_until = now + HEARTBEAT_GRACE * heartbeat_interval
        with self._db:
            if node_id is None:
                node_id = self._fresh_node_id()
            self._db.execute(
                """
                INSERT INTO nodes (node_id, identity, organisation, auth_method, cert_fingerprint,
                    cert_not_after, session_id, online_until, last_seen, created_at, peer_address)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(node_id) DO UPDATE SET
                    identity = excluded.identity, organisation = excluded.organisation,
                    auth_method = excluded.auth_method,
                    cert_fingerprint = excluded.cert_fingerprint,
                    cert_not_after = excluded.cert_not_after, session_id = excluded.session_id,
                    online_until = excluded.online_until, last_seen = excluded.last_seen,
                    peer_address = excluded.peer_address
                """,
                (
                    node_id,
                    identity,
                    organisation,
                    auth_method,
                    cert_fingerprint,
                    cert_not_after,
                    session_id,
                    online_until,
                    now,
                    now,
                    peer_address,
                ),
            )
        return node_id, session_id

    def _fresh_node_id(self) -> int:
        while True:
            candidate = secrets.randbits(63) or 1
            row = self._db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (candidate,))
            if row.fetchone() is None:
                return candidate

    def node_of_session(self, session_id: str) -> int:
        """Fleet servicer, callers without a derived node id: whose session is this."""
        row = self._db.execute(
            "SELECT node_id FROM nodes WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None:
            raise UnknownSession(session_id)
        return int(row[0])

    def check_session(self, node_id: int, session_id: str) -> None:
        """Fleet servicer: raise unless ``session_id`` is the node's newest session."""
        row = self._db.execute(
            "SELECT session_id, peer_address FROM nodes WHERE node_id = ?", (node_id,)
        ).fetchone()
        if row is None or row[0] is None:
            raise UnknownSession(session_id)
        if row[0] != session_id:
            raise SessionSuperseded(row[1])

    def heartbeat(
        self,
        node_id: int,
        session_id: str,
        *,
        now: float,
        heartbeat_interval: float,
        peer_address: str,
    ) -> None:
        """Fleet servicer: keep the node online."""
        self.check_session(node_id, session_id)
        self._db.execute(
            "UPDATE nodes SET online_until = ?, last_seen = ?, peer_address = ? WHERE node_id = ?",
            (now + HEARTBEAT_GRACE * heartbeat_interval, now, peer_address, node_id),
        )

    def deactivate_node(self, node_id: int, session_id: str, *, now: float) -> None:
        """Fleet servicer: the node is leaving."""
        self.check_session(node_id, session_id)
        self._db.execute(
            "UPDATE nodes SET session_id = NULL, online_until = ?, last_seen = ? WHERE node_id = ?",
            (now, now, node_id),
        )

    def pull_messages(self, node_id: int, *, now: float, limit: int) -> list[StoredMessage]:
        """Fleet servicer: undelivered, unexpired messages for the node, marked delivered."""
        with self._db:
            rows = self._db.execute(
                """
                SELECT message_id, run_id, src_node_id, dst_node_id, message_type,
                       reply_to_message_id, content, created_at, ttl
                FROM messages
                WHERE dst_node_id = ? AND delivered_at IS NULL AND created_at + ttl > ?
                ORDER BY created_at LIMIT ?
                """,
                (node_id, now, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE messages SET delivered_at = ? WHERE message_id = ?",
                [(now, row[0]) for row in rows],
            )
        return [StoredMessage(*row) for row in rows]

    def store_messages(self, messages: Iterable[StoredMessage]) -> list[str]:
        """Fleet servicer (replies from nodes) and, later, the ServerApp side (instructions)."""
        batch = list(messages)
        with self._db:
            self._db.executemany(
                """
                INSERT INTO messages (message_id, run_id, src_node_id, dst_node_id, message_type,
                    reply_to_message_id, content, created_at, ttl)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    (
                        m.message_id,
                        m.run_id,
                        m.src_node_id,
                        m.dst_node_id,
                        m.message_type,
                        m.reply_to_message_id,
                        m.content,
                        m.created_at,
                        m.ttl,
                    )
                    for m in batch
                ],
            )
        return [m.message_id for m in batch]

    def messages_for(self, dst_node_id: int) -> list[StoredMessage]:
        """The ServerApp side: replies addressed to ``dst_node_id`` (0 = the ServerApp)."""
        rows = self._db.execute(
            """
            SELECT message_id, run_id, src_node_id, dst_node_id, message_type,
                   reply_to_message_id, content, created_at, ttl
            FROM messages WHERE dst_node_id = ? ORDER BY created_at
            """,
            (dst_node_id,),
        ).fetchall()
        return [StoredMessage(*row) for row in rows]

    # --- Control servicer -----------------------------------------------------------------

    def list_nodes(self, *, now: float) -> list[NodeRecord]:
        """Control servicer: every node the link has seen, online ones first."""
        rows = self._db.execute(
            """
            SELECT node_id, identity, organisation, auth_method, cert_fingerprint,
                   cert_not_after, online_until > ?, last_seen, created_at, peer_address
            FROM nodes ORDER BY online_until > ? DESC, identity
            """,
            (now, now),
        ).fetchall()
        return [
            NodeRecord(
                node_id=row[0],
                identity=row[1],
                organisation=row[2],
                auth_method=row[3],
                cert_fingerprint=row[4],
                cert_not_after=row[5],
                online=bool(row[6]),
                last_seen=row[7],
                created_at=row[8],
                peer_address=row[9],
            )
            for row in rows
        ]
