"""Registered EC public keys (CLI-managed mode, ``--enable-supernode-auth``).

Rules:

* A key is ``registered`` or ``unregistered``; a key never registered is unknown. Registering
  an unregistered key registers it again (Flower cannot): the node keeps its node id, which
  derives from the key.
* A key may be bound to one certificate node (``certificate+key`` mode): the node id of the
  certificate identity it was registered for. A certificate+key link admits a key only with
  the certificate of that node. Registering a registered key with another binding changes the
  binding ("rebound"); with the same one it changes nothing ("already registered").
* Lookups run on every call of an EC-key node, so the table is mirrored in memory and a lookup
  is a dict access. Several link processes on one database: a write is announced to the others
  (they read the key again), and a key this process does not know is looked up in the
  database before it is called unknown.

* The mirror changes only once the database has (:meth:`Transactions.after_commit`), so a
  registration that fails, or that is part of a larger change that fails, changes nothing.

Callers: :class:`~flwrmtls.state.linkstate.LinkState` (register, unregister, each together
with the node's own row), the EC-key authenticator (status), the certificate+key
authenticator (binding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from flwrmtls.state.database import Database
from flwrmtls.state.transaction import Transactions

__all__ = ["KeyRecord", "KeyRegistration", "NodeKeyTable"]


class KeyRegistration(enum.StrEnum):
    REGISTERED = "registered"
    UNREGISTERED = "unregistered"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    public_key: bytes
    node_id: int
    """The key's own node id (derived from the key)."""
    fingerprint: str
    status: KeyRegistration
    changed_at: float
    changed_by: str
    bound_node_id: int | None = None
    """certificate+key: the certificate node this key was registered for; None: no binding."""
    bound_identity: str = ""
    """That node's identity as the operator gave it (for listings and messages)."""


_COLUMNS = (
    "public_key, node_id, fingerprint, status, changed_at, changed_by, bound_node_id, "
    "bound_identity"
)


def _record(row: Any) -> KeyRecord:
    bound = row[6]
    return KeyRecord(
        bytes(row[0]), int(row[1]), str(row[2]), KeyRegistration(row[3]), float(row[4]),
        str(row[5]), None if bound is None else int(bound), str(row[7]),
    )  # fmt: skip


class NodeKeyTable:
    def __init__(self, db: Database, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)
        self._by_key: dict[bytes, KeyRecord] = {}
        self._by_node: dict[int, KeyRecord] = {}
        for row in db.execute(f"SELECT {_COLUMNS} FROM node_keys"):
            self._remember(_record(row))

    def reload_all(self) -> None:
        """Read every key again (another link process may have changed any)."""
        self._by_key.clear()
        self._by_node.clear()
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM node_keys"):
            self._remember(_record(row))

    def reload(self, node_id: int) -> None:
        """Another link process changed the key of ``node_id``: read it again."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM node_keys WHERE node_id = :node", {"node": node_id}
        ).first()
        if row is not None:
            self._remember(_record(row))

    def _read_through(self, public_key: bytes) -> KeyRecord | None:
        """A key this process has not seen: another link process may have registered it."""
        if not self._db.shared:
            return None
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM node_keys WHERE public_key = :key", {"key": public_key}
        ).first()
        if row is None:
            return None
        record = _record(row)
        self._remember(record)
        return record

    def _remember(self, record: KeyRecord) -> None:
        self._by_key[record.public_key] = record
        self._by_node[record.node_id] = record

    def status(self, public_key: bytes) -> KeyRegistration | None:
        """The key's registration, None if it was never registered (a dict lookup)."""
        record = self.get(public_key)
        return None if record is None else record.status

    def get(self, public_key: bytes) -> KeyRecord | None:
        """The key's record (status and when it changed), None if never registered."""
        record = self._by_key.get(public_key)
        return record if record is not None else self._read_through(public_key)

    def by_node(self, node_id: int) -> KeyRecord | None:
        """The key whose own node id is ``node_id`` (a dict lookup)."""
        return self._by_node.get(node_id)

    def bound_node(self, key_node_id: int) -> int | None:
        """The certificate node the key with node id ``key_node_id`` is registered for."""
        record = self._by_node.get(key_node_id)
        if record is None or record.status is not KeyRegistration.REGISTERED:
            return None
        return record.bound_node_id

    def all(self) -> list[KeyRecord]:
        return list(self._by_key.values())

    def register(
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
        """Register a key (bound to a certificate node, or not); returns "registered",
        "registered again", "rebound" (a registered key bound anew) or "already registered"."""
        current = self.get(public_key)
        if current is not None and current.status is KeyRegistration.REGISTERED:
            if current.bound_node_id == bound_node_id:
                return "already registered"
            outcome = "rebound"
        else:
            outcome = "registered" if current is None else "registered again"
        self._write(
            KeyRecord(
                public_key,
                node_id,
                fingerprint,
                KeyRegistration.REGISTERED,
                now,
                by,
                bound_node_id,
                bound_identity if bound_node_id is not None else "",
            )
        )
        return outcome

    def unregister(self, node_id: int, *, by: str, now: float) -> KeyRecord | None:
        """Unregister the key of ``node_id``; None if no key belongs to that node."""
        current = self.by_node(node_id)
        if current is None:
            return None
        record = KeyRecord(
            current.public_key, node_id, current.fingerprint, KeyRegistration.UNREGISTERED, now,
            by, current.bound_node_id, current.bound_identity,
        )  # fmt: skip
        self._write(record)
        return record

    def _write(self, record: KeyRecord) -> None:
        self._db.execute(
            f"INSERT INTO node_keys ({_COLUMNS}) VALUES (:key, :node, :fingerprint, :status, "
            ":at, :by, :bound_node, :bound_identity) "
            "ON CONFLICT(public_key) DO UPDATE SET status = excluded.status, "
            "changed_at = excluded.changed_at, changed_by = excluded.changed_by, "
            "bound_node_id = excluded.bound_node_id, bound_identity = excluded.bound_identity",
            {"key": record.public_key, "node": record.node_id, "fingerprint": record.fingerprint,
             "status": record.status.value, "at": record.changed_at, "by": record.changed_by,
             "bound_node": record.bound_node_id, "bound_identity": record.bound_identity},
        )  # fmt: skip
        self._db.publish("key", record.node_id)
        self._transaction.after_commit(lambda: self._remember(record))
