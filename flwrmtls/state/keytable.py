"""Registered EC public keys (CLI-managed mode, ``--enable-supernode-auth``).

Rules:

* A key is ``registered`` or ``unregistered``; a key never registered is unknown. Registering
  an unregistered key registers it again (Flower cannot): the node keeps its node id, which
  derives from the key.
* Lookups run on every call of an EC-key node, so the table is mirrored in memory (the link is
  the only writer of its database) and a lookup is a dict access.

* The mirror changes only once the database has (:meth:`Transactions.after_commit`), so a
  registration that fails, or that is part of a larger change that fails, changes nothing.

Callers: :class:`~flwrmtls.state.linkstate.LinkState` (register, unregister, each together
with the node's own row), the EC-key authenticator (status).
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
    fingerprint: str
    status: KeyRegistration
    changed_at: float
    changed_by: str


class NodeKeyTable:
    def __init__(self, db: sqlite3.Connection, transactions: Transactions | None = None) -> None:
        self._db = db
        self._transaction = transactions or Transactions(db)
        self._by_key: dict[bytes, KeyRecord] = {}
        for row in db.execute(
            "SELECT public_key, node_id, fingerprint, status, changed_at, changed_by FROM node_keys"
        ):
            record = KeyRecord(
                bytes(row[0]), row[1], row[2], KeyRegistration(row[3]), row[4], row[5]
            )
            self._by_key[record.public_key] = record

    def status(self, public_key: bytes) -> KeyRegistration | None:
        """The key's registration, None if it was never registered (a dict lookup)."""
        record = self._by_key.get(public_key)
        return None if record is None else record.status

    def get(self, public_key: bytes) -> KeyRecord | None:
        """The key's record (status and when it changed), None if never registered."""
        return self._by_key.get(public_key)

    def by_node(self, node_id: int) -> KeyRecord | None:
        for record in self._by_key.values():
            if record.node_id == node_id:
                return record
        return None

    def all(self) -> list[KeyRecord]:
        return list(self._by_key.values())

    def register(
        self, public_key: bytes, *, node_id: int, fingerprint: str, by: str, now: float
    ) -> str:
        """Register a key; returns "registered", "registered again" or "already registered"."""
        current = self._by_key.get(public_key)
        if current is not None and current.status is KeyRegistration.REGISTERED:
            return "already registered"
        outcome = "registered" if current is None else "registered again"
        self._write(
            KeyRecord(public_key, node_id, fingerprint, KeyRegistration.REGISTERED, now, by)
        )
        return outcome

    def unregister(self, node_id: int, *, by: str, now: float) -> KeyRecord | None:
        """Unregister the key of ``node_id``; None if no key belongs to that node."""
        current = self.by_node(node_id)
        if current is None:
            return None
        record = KeyRecord(
            current.public_key, node_id, current.fingerprint, KeyRegistration.UNREGISTERED, now, by
        )
        self._write(record)
        return record

    def _write(self, record: KeyRecord) -> None:
        self._db.execute(
            "INSERT INTO node_keys (public_key, node_id, fingerprint, status, changed_at, "
            "changed_by) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(public_key) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at, "
            "changed_by = excluded.changed_by",
            (record.public_key, record.node_id, record.fingerprint, record.status.value,
             record.changed_at, record.changed_by),
        )  # fmt: skip

        def remember() -> None:
            self._by_key[record.public_key] = record

        self._transaction.after_commit(remember)
