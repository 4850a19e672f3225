"""Registered EC public keys (CLI-managed mode, ``--enable-supernode-auth``).

Rules:

* A key is ``registered`` or ``unregistered``; a key never registered is unknown. Registering
  an unregistered key registers it again (Flower cannot): the node keeps its node id, which
  derives from the key.
* A key may be bound to one certificate node (``certificate+key`` mode): the node id of the
  certificate identity it was registered for. A certificate+key link admits a key only with
  the certificate of that node. Registering a registered key with another binding changes the
  binding ("rebound"); with the same one it changes nothing ("already registered").
* Lookups run on every call of an EC-key node, so the table is mirrored in memory (the link is
  the only writer of its database) and a lookup is a dict access.

* The mirror changes only once the database has (:meth:`Transactions.after_commit`), so a
  registration that fails, or that is part of a larger change that fails, changes nothing.

Callers: :class:`~flwrmtls.state.linkstate.LinkState` (register, unregister, each together
with the node's own row), the EC-key authenticator (status), the certificate+key
authenticator (binding).
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass

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


class NodeKeyTable:
    def __init__(self, db: sqlite3.Connection, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)
        self._by_key: dict[bytes, KeyRecord] = {}
        self._by_node: dict[int, KeyRecord] = {}
        for row in db.execute(
            "SELECT public_key, node_id, fingerprint, status, changed_at, changed_by, "
            "bound_node_id, bound_identity FROM node_keys"
        ):
            self._remember(
                KeyRecord(
                    bytes(row[0]),
                    row[1],
                    row[2],
                    KeyRegistration(row[3]),
                    row[4],
                    row[5],
                    row[6],
                    row[7],
                )
            )

    def _remember(self, record: KeyRecord) -> None:
        self._by_key[record.public_key] = record
        self._by_node[record.node_id] = record

    def status(self, public_key: bytes) -> KeyRegistration | None:
        """The key's registration, None if it was never registered (a dict lookup)."""
        record = self._by_key.get(public_key)
        return None if record is None else record.status

    def get(self, public_key: bytes) -> KeyRecord | None:
        """The key's record (status and when it changed), None if never registered."""
        return self._by_key.get(public_key)

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
        current = self._by_key.get(public_key)
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
            "INSERT INTO node_keys (public_key, node_id, fingerprint, status, changed_at, "
            "changed_by, bound_node_id, bound_identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(public_key) DO UPDATE SET status = excluded.status, "
            "changed_at = excluded.changed_at, changed_by = excluded.changed_by, "
            "bound_node_id = excluded.bound_node_id, bound_identity = excluded.bound_identity",
            (record.public_key, record.node_id, record.fingerprint, record.status.value,
             record.changed_at, record.changed_by, record.bound_node_id, record.bound_identity),
        )  # fmt: skip
        self._transaction.after_commit(lambda: self._remember(record))
