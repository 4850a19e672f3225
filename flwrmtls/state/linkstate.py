"""The link's state in one SQLite file: nodes, their sessions, and messages.

Node lifecycle (status is derived, never stored):

====================  ==========================================  ===========
event                 effect                                      status
====================  ==========================================  ===========
ActivateNode          row created or updated; new session_id;     online
                      online_until = now + grace * interval;
                      the node's message leases end
Heartbeat             online_until = now + grace * interval       online
DeactivateNode        session cleared; online_until = now         offline
connection closed     online_until = now (session kept; see       offline
                      :mod:`flwrmtls.runs.presence`)
a call on that        as Heartbeat (the Fleet servicer resumes    online
session since         it at once)
no heartbeat          online_until passes                         offline
link (re)start        rows and sessions kept; online_until        offline
                      capped at now (:meth:`LinkState.link_started`)
a call on a session   Heartbeat resumes it (online), or the node  online
kept over a restart   activates again: same node id, new session
====================  ==========================================  ===========

Why offline after a restart, not "online" or a status of its own: the database says when each
node was last heard of by a process that is gone (after a crash or an OOM kill, the nodes may
have died with it), and "online" is a promise the ServerApp acts on (GetNodes picks from it).
Offline is what the link knows: it has not heard from the node since it started. Scripts see
no new status; a node that is alive calls within one heartbeat interval or one reconnect
backoff, and is online again.

Two live connections with the same identity: the newest activation wins. Its session id
replaces the older one, whose next call gets :class:`SessionSuperseded` and stops (a node
restarted elsewhere, or a copied certificate, cannot run twice under one identity).

Every method says which caller uses it. Times are seconds since the epoch (float). Runs and
messages live in their own tables (:mod:`~flwrmtls.state.runtable`,
:mod:`~flwrmtls.state.messagetable`), reached as ``state.runs`` and ``state.messages``; which
run each object belongs to is ``state.objects`` (:mod:`~flwrmtls.state.objecttable`).

Every change of more than one statement is one transaction (:mod:`~flwrmtls.state.transaction`,
shared by every table, and open to callers as ``state.transaction`` for changes that span
tables: a run's end, a push of messages with the objects they name): activating a node starts
its session and ends its message leases together, unregistering a node ends its key's
registration and its row's session together, registering a key again readmits its node in the
same commit. The in-memory mirrors (sessions, unregistered nodes) change only after the
commit. What a crash at any statement leaves is what the last commit left; at start-up
:meth:`LinkState.forget_inactive_runs` deletes whatever of a run that is not active an older
link may have left (its tokens, messages and object rows).

The database is a SQLite file (one link) or a PostgreSQL database several link processes
share (:mod:`flwrmtls.state.database`). A SQLite file is created private to the link's OS
account (0600) before SQLite opens it; SQLite gives its ``-wal`` and ``-shm`` files the
database file's mode (see :mod:`flwrmtls.filemodes`).

Several link processes on one database (each a *replica*, :mod:`flwrmtls.state.replicas`):

* The database is the truth; each process's mirrors (sessions, unregistered and refused
  nodes, keys, pins, run tokens) follow it. A change is announced to the others in the
  transaction that makes it (:meth:`Database.publish`: PostgreSQL's NOTIFY, delivered at
  commit), and each process reads the changed rows again when the announcement arrives
  (:meth:`LinkState.apply`), or everything when it may have missed one (:meth:`reload`).
* A mirror that does not know a session, key or pin it is asked for reads the database
  before it refuses (a node's next call may reach another process before the announcement
  does); a positive answer is at most one announcement old.
* Start-up marks every node offline only when no other process is alive (they serve them).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flwrmtls.auth.audit import Retention
from flwrmtls.errors import InputError
from flwrmtls.filemodes import private_file, tighten
from flwrmtls.state.audittable import DEFAULT_LIMITS, AuditTable
from flwrmtls.state.database import Database, DatabaseError, error_reason
from flwrmtls.state.enrolltable import EnrollTable
from flwrmtls.state.faults import CrashPoint, install
from flwrmtls.state.keytable import NodeKeyTable
from flwrmtls.state.messagetable import MessageTable
from flwrmtls.state.noncetable import NonceTable
from flwrmtls.state.objecttable import ObjectTable
from flwrmtls.state.pintable import IdentityPinTable
from flwrmtls.state.replicas import ReplicaTable
from flwrmtls.state.runtable import RunTable
from flwrmtls.state.schema import migrate
from flwrmtls.state.transaction import Transactions

__all__ = [
    "HEARTBEAT_GRACE",
    "LinkState",
    "NodeRecord",
    "SessionSuperseded",
    "UnknownSession",
]

log = logging.getLogger("flwrmtls.state")

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
    status: str
    """"online", "offline", "unregistered", "registered" (a key that never connected), or
    "revoked" / "expired": the link refused the node's verified certificate for that reason and
    has not admitted it since."""
    last_seen: float
    created_at: float
    peer_address: str
    status_detail: str = ""
    """For "revoked" and "expired": the refusal the node got (serial, reason, date)."""


def _tighten_database_files(path: Path) -> list[str]:
    """Take group and other access off the database and its -wal and -shm, once SQLite has
    opened it (a file that is not a database is never touched): an older link left them so."""
    warnings = [tighten(Path(f"{path}{suffix}")) for suffix in ("", "-wal", "-shm")]
    return [warning for warning in warnings if warning]


class LinkState:
    def __init__(
        self, database: str | Path, *, audit_limits: Mapping[Retention, int] = DEFAULT_LIMITS
    ) -> None:
        """``audit_limits``: entries the audit trail keeps per retention class."""
        self.replica_id = secrets.token_hex(8)
        """This link process, among those sharing the database."""
        self.path = str(database)
        db: Database | None = None
        try:
            on_disk = "://" not in self.path and self.path != ":memory:"
            if on_disk:  # 0600 before SQLite creates it: its -wal and -shm get the same mode
                private_file(Path(self.path))
            db = Database(self.path)
            self.path = db.display
            migrate(db)
            for warning in _tighten_database_files(Path(self.path)) if on_disk else []:
                log.warning("%s", warning)
        except (DatabaseError, OSError) as error:
            if db is not None:
                db.close()
            reason = error.strerror if isinstance(error, OSError) else error_reason(error)
            raise InputError(
                f"cannot open database {db.display if db else self.path}: {reason}: "
                "check --database"
            ) from None
        except InputError:
            if db is not None:
                db.close()
            raise
        db.origin = self.replica_id
        self._db = db
        self.db = db
        """The connection every table uses."""
        self._transaction = Transactions(self._db)
        self.transaction = self._transaction
        """``with state.transaction():`` makes a change of several tables one commit."""
        self.runs = RunTable(self._db, self._transaction)
        self.runs.replica_id = self.replica_id
        self.replicas = ReplicaTable(self._db, self._transaction)
        self.messages = MessageTable(self._db, self._transaction)
        self.objects = ObjectTable(self._db, self._transaction)
        self.keys = NodeKeyTable(self._db, self._transaction)
        self.audit = AuditTable(self._db, limits=audit_limits, transactions=self._transaction)
        self.pins = IdentityPinTable(self._db)
        self.nonces = NonceTable(self._db)
        self.enroll = EnrollTable(self._db, self._transaction)
        # Sessions are checked on nearly every Fleet call: mirrored in memory; node id ->
        # (session id, peer at activation).
        self._sessions: dict[int, tuple[str, str]] = {}
        self._session_nodes: dict[str, int] = {}
        self._unregistered: set[int] = set()
        # node id -> why the link last refused it (revoked, expired), until it is admitted.
        self._refused: dict[int, str] = {}
        self._load_nodes()

    @property
    def shared(self) -> bool:
        """Whether other link processes may share this database (PostgreSQL)."""
        return self._db.shared

    def _load_nodes(self) -> None:
        self._sessions = {
            int(row[0]): (str(row[1]), str(row[2]))
            for row in self._db.execute(
                "SELECT node_id, session_id, peer_address FROM nodes WHERE session_id IS NOT NULL"
            )
        }
        self._session_nodes = {session: node for node, (session, _) in self._sessions.items()}
        self._unregistered = {
            int(row[0])
            for row in self._db.execute("SELECT node_id FROM nodes WHERE unregistered_at > 0")
        }
        self._refused = {
            int(row[0]): str(row[1])
            for row in self._db.execute(
                "SELECT node_id, refused_reason FROM nodes WHERE refused_reason != ''"
            )
        }

    def reload(self) -> None:
        """Several links: read every mirror again (announcements may have been missed)."""
        self._load_nodes()
        self.keys.reload_all()
        self.pins.reload_all()

    def apply(self, topic: str, value: object) -> bool:
        """Several links: another process announced a change (see the module's rules).
        True when who may call changed (a node unregistered or admitted again, a key's
        registration): open calls must be judged again."""
        if topic == "node" and isinstance(value, int):
            was = value in self._unregistered
            self._reload_node(value)
            return was != (value in self._unregistered)
        if topic == "key" and isinstance(value, int):
            self.keys.reload(value)
            return True
        if topic == "pin" and isinstance(value, str):
            self.pins.reload(value)
        elif topic == "run-ended" and isinstance(value, int):
            self.runs.forget_ended(value)
        return False

    def _reload_node(self, node_id: int) -> None:
        """Read one node's session, unregistration and refusal into the mirrors."""
        row = self._db.execute(
            "SELECT session_id, peer_address, unregistered_at > 0, refused_reason FROM nodes "
            "WHERE node_id = :node",
            {"node": node_id},
        ).first()
        self._end_session(node_id)
        if row is None:
            self._unregistered.discard(node_id)
            self._refused.pop(node_id, None)
            return
        if row[0] is not None:
            stale = self._session_nodes.get(str(row[0]))
            if stale is not None:
                self._sessions.pop(stale, None)
            self._sessions[node_id] = (str(row[0]), str(row[1]))
            self._session_nodes[str(row[0])] = node_id
        if row[2]:
            self._unregistered.add(node_id)
        else:
            self._unregistered.discard(node_id)
        if row[3]:
            self._refused[node_id] = str(row[3])
        else:
            self._refused.pop(node_id, None)

    def close(self) -> None:
        self._db.close()

    def crash_at(self, point: CrashPoint) -> None:
        """Tests only (:mod:`flwrmtls.state.faults`): the process dies at ``point``."""
        install(self._db, point)

    def link_started(self, *, now: float) -> int:
        """Link start-up: every node is offline until it calls again; sessions stay valid.
        Returns how many nodes the database still showed online. With other link processes
        alive on the database, nothing changes (they serve those nodes)."""
        if self.replicas.others_alive(self.replica_id, now=now):
            return 0
        result = self._db.execute(
            "UPDATE nodes SET online_until = :now WHERE online_until > :now", {"now": now}
        )
        return result.rowcount

    def forget_inactive_runs(self) -> dict[str, int]:
        """Link start-up, once the runs that were active have ended: in one transaction,
        delete the tokens, messages and object rows of every run that is not active (none
        should be left; an older link that crashed between a run's end and its cleanup left
        some). Returns how many rows of each kind went."""
        with self._transaction():
            return {
                "tokens": self.runs.drop_inactive_tokens(),
                "messages": self.messages.delete_inactive_runs(),
                "object rows": self.objects.release_inactive_runs(),
            }

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
        with self._transaction():
            if node_id is None:
                node_id = self._fresh_node_id()
            self._db.execute(
                """
                INSERT INTO nodes (node_id, identity, organisation, auth_method, cert_fingerprint,
                    cert_not_after, session_id, online_until, last_seen, created_at, peer_address)
                VALUES (:node_id, :identity, :organisation, :auth_method, :fingerprint,
                    :not_after, :session_id, :online_until, :now, :now, :peer)
                ON CONFLICT(node_id) DO UPDATE SET
                    identity = excluded.identity, organisation = excluded.organisation,
                    auth_method = excluded.auth_method,
                    cert_fingerprint = excluded.cert_fingerprint,
                    cert_not_after = excluded.cert_not_after, session_id = excluded.session_id,
                    online_until = excluded.online_until, last_seen = excluded.last_seen,
                    peer_address = excluded.peer_address, refused_reason = '', refused_detail = ''
                """,
                {
                    "node_id": node_id,
                    "identity": identity,
                    "organisation": organisation,
                    "auth_method": auth_method,
                    "fingerprint": cert_fingerprint,
                    "not_after": cert_not_after,
                    "session_id": session_id,
                    "online_until": online_until,
                    "now": now,
                    "peer": peer_address,
                },
            )
            # What an earlier session was handed and did not acknowledge may never have
            # reached a ClientApp: it is handed out again (see messagetable).
            self.messages.release_leases(node_id)
            self._db.publish("node", node_id)
        old = self._sessions.get(node_id)
        if old is not None:
            self._session_nodes.pop(old[0], None)
        self._sessions[node_id] = (session_id, peer_address)
        self._session_nodes[session_id] = node_id
        self._refused.pop(node_id, None)
        return node_id, session_id

    def node_refused(self, node_id: int, reason: str, detail: str, *, now: float) -> bool:
        """Fleet interceptor: the link refused a node it verified (its certificate revoked or
        expired). The node is shown so from now on, offline, until it is admitted again.
        Written once per node and reason (a refused node retrying costs a dict lookup); True
        when the node's status changed."""
        if self._refused.get(node_id) == reason:
            return False
        with self._transaction():
            result = self._db.execute(
                "UPDATE nodes SET refused_reason = :reason, refused_detail = :detail, "
                "online_until = CASE WHEN online_until < :now THEN online_until ELSE :now END "
                "WHERE node_id = :node",
                {"reason": reason, "detail": detail[:500], "now": now, "node": node_id},
            )
            if result.rowcount:
                self._db.publish("node", node_id)
        if not result.rowcount:
            return False  # a node the link never admitted: nothing to show
        self._refused[node_id] = reason
        return True

    def _end_session(self, node_id: int) -> None:
        old = self._sessions.pop(node_id, None)
        if old is not None:
            self._session_nodes.pop(old[0], None)

    def _fresh_node_id(self) -> int:
        while True:
            candidate = secrets.randbits(63) or 1
            row = self._db.execute(
                "SELECT 1 FROM nodes WHERE node_id = :node", {"node": candidate}
            ).first()
            if row is None:
                return candidate

    def node_of_session(self, session_id: str) -> int:
        """Fleet servicer, callers without a derived node id: whose session is this."""
        node_id = self._session_nodes.get(session_id)
        if node_id is None and self._db.shared:  # activated through another link process?
            row = self._db.execute(
                "SELECT node_id FROM nodes WHERE session_id = :session", {"session": session_id}
            ).first()
            if row is not None:
                self._reload_node(int(row[0]))
                node_id = self._session_nodes.get(session_id)
        if node_id is None:
            raise UnknownSession(session_id)
        return node_id

    def check_session(self, node_id: int, session_id: str) -> None:
        """Fleet servicer: raise unless ``session_id`` is the node's newest session (a dict
        lookup)."""
        current = self._sessions.get(node_id)
        if (current is None or current[0] != session_id) and self._db.shared:
            self._reload_node(node_id)  # another link process may have started it
            current = self._sessions.get(node_id)
        if current is None:
            raise UnknownSession(session_id)
        if current[0] != session_id:
            raise SessionSuperseded(current[1])

    def heartbeat(
        self,
        node_id: int,
        session_id: str,
        *,
        now: float,
        heartbeat_interval: float,
        peer_address: str | None,
    ) -> None:
        """Fleet servicer: keep the node online (one statement when the session is current);
        ``peer_address`` None keeps the one recorded."""
        result = self._db.execute(
            "UPDATE nodes SET online_until = :until, last_seen = :now, "
            "peer_address = COALESCE(:peer, peer_address) "
            "WHERE node_id = :node AND session_id = :session",
            {"until": now + HEARTBEAT_GRACE * heartbeat_interval, "now": now,
             "peer": peer_address, "node": node_id, "session": session_id},
        )  # fmt: skip
        if result.rowcount == 0:
            self.check_session(node_id, session_id)  # raises the precise reason
            raise UnknownSession(session_id)

    def connection_closed(self, node_id: int, session_id: str, *, now: float) -> bool:
        """Fleet servicer (:mod:`flwrmtls.runs.presence`): the node's connection closed and it
        has not called since. Offline from ``now`` if ``session_id`` is still its session and
        it was online; returns whether it was. The session stays: a node that was only cut
        off resumes it with its next call."""
        result = self._db.execute(
            "UPDATE nodes SET online_until = :now WHERE node_id = :node "
            "AND session_id = :session AND online_until > :now",
            {"now": now, "node": node_id, "session": session_id},
        )
        return result.rowcount > 0

    def deactivate_node(self, node_id: int, session_id: str, *, now: float) -> None:
        """Fleet servicer: the node is leaving."""
        self.check_session(node_id, session_id)
        with self._transaction():
            self._db.execute(
                "UPDATE nodes SET session_id = NULL, online_until = :now, last_seen = :now "
                "WHERE node_id = :node",
                {"now": now, "node": node_id},
            )
            self._db.publish("node", node_id)
        self._end_session(node_id)

    def online_nodes(self, *, now: float) -> list[tuple[int, str]]:
        """ServerAppIo servicer: (node id, identity) of nodes online now."""
        rows = self._db.execute(
            "SELECT node_id, identity FROM nodes WHERE online_until > :now "
            "AND unregistered_at = 0 ORDER BY node_id",
            {"now": now},
        ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def node_status(self, node_ids: list[int], *, now: float) -> dict[int, tuple[str, float, bool]]:
        """ServerAppIo servicer: identity, online-until and unregistered-or-not of each node."""
        if not node_ids:
            return {}
        rows = self._db.execute(
            "SELECT node_id, identity, online_until, unregistered_at > 0 FROM nodes "
            "WHERE node_id IN :nodes",
            {"nodes": list(node_ids)},
        ).fetchall()
        return {int(r[0]): (str(r[1]), float(r[2]), bool(r[3])) for r in rows}

    def identity_of(self, node_id: int) -> str:
        row = self._db.execute(
            "SELECT identity FROM nodes WHERE node_id = :node", {"node": node_id}
        ).first()
        return "" if row is None else str(row[0])

    # --- Control servicer -----------------------------------------------------------------

    def list_nodes(self, *, now: float, verbose: bool = False) -> list[NodeRecord]:
        """Control servicer: nodes the link has seen, and registered keys that never
        connected; unregistered nodes only when ``verbose``. Online ones first."""
        rows = self._db.execute(
            """
            SELECT node_id, identity, organisation, auth_method, cert_fingerprint,
                   cert_not_after, online_until > :now, last_seen, created_at, peer_address,
                   unregistered_at > 0, refused_reason, refused_detail
            FROM nodes ORDER BY online_until > :now DESC, identity
            """,
            {"now": now},
        ).fetchall()
        records = [
            NodeRecord(
                node_id=row[0], identity=row[1], organisation=row[2], auth_method=row[3],
                cert_fingerprint=row[4], cert_not_after=row[5],
                status="unregistered" if row[10] else (
                    row[11] or ("online" if row[6] else "offline")
                ),  # PostgreSQL answers the comparisons as booleans, SQLite as 0 and 1
                last_seen=row[7], created_at=row[8], peer_address=row[9],
                status_detail=row[12] if row[11] and not row[10] else "",
            )
            for row in rows
        ]  # fmt: skip
        seen = {record.node_id for record in records}
        for key in self.keys.all():
            if key.node_id in seen:
                continue
            records.append(
                NodeRecord(
                    node_id=key.node_id, identity=key.fingerprint, organisation="",
                    auth_method="key", cert_fingerprint="", cert_not_after=0.0,
                    status=key.status.value, last_seen=0.0, created_at=key.changed_at,
                    peer_address="",
                )
            )  # fmt: skip
        return [r for r in records if verbose or r.status != "unregistered"]

    def unregister_node(self, node_id: int, *, by: str, now: float) -> NodeRecord | None:
        """Control servicer: in one transaction, unregister the node's key (if it has one) and
        mark the node unregistered and offline, ending its session."""
        with self._transaction():
            self.keys.unregister(node_id, by=by, now=now)
            self._db.execute(
                "UPDATE nodes SET unregistered_at = :now, session_id = NULL, online_until = 0 "
                "WHERE node_id = :node",
                {"now": now, "node": node_id},
            )
            self._db.publish("node", node_id)
            self._transaction.after_commit(lambda: self._mark_unregistered(node_id))
        return next(
            (r for r in self.list_nodes(now=now, verbose=True) if r.node_id == node_id), None
        )

    def _mark_unregistered(self, node_id: int) -> None:
        self._unregistered.add(node_id)
        self._end_session(node_id)

    def register_key(
        self,
        public_key: bytes,
        *,
        node_id: int,
        fingerprint: str,
        by: str,
        now: float,
        bound_node_id: int | None = None,
        bound_identity: str = "",
    ) -> str:
        """Control servicer: register an EC key (bound to a certificate node, or not); a key
        registered again readmits its node in the same transaction. Returns the key table's
        outcome."""
        with self._transaction():
            outcome = self.keys.register(
                public_key, node_id=node_id, fingerprint=fingerprint, by=by, now=now,
                bound_node_id=bound_node_id, bound_identity=bound_identity,
            )  # fmt: skip
            if outcome == "registered again":
                self.readmit_node(node_id)
        return outcome

    def readmit_node(self, node_id: int) -> None:
        """Control servicer (readmit, or a key registered again): the node may connect again."""
        self._db.execute(
            "UPDATE nodes SET unregistered_at = 0 WHERE node_id = :node", {"node": node_id}
        )
        self._db.publish("node", node_id)
        self._transaction.after_commit(lambda: self._unregistered.discard(node_id))

    def is_unregistered(self, node_id: int) -> bool:
        """Authenticators, on every call: a set lookup."""
        return node_id in self._unregistered
