"""Which CA key each certificate identity was last admitted under (its pin).

Rules:

* One row per identity (a node's or a CLI user's); :mod:`flwrmtls.auth.authority` decides when
  a pin is made or moves, this table only keeps it.
* Pins are read on every certificate call, so the table is mirrored in memory and a lookup
  is a dict access; a write goes to the database first, then to the mirror.
* Several link processes on one database: a write is announced to the others, which read the
  pin again; an identity this process has no pin for is looked up in the database before it
  is pinned anew (another process may have pinned it a moment ago).

Callers: the certificate authenticators of the Fleet and Control listeners.
"""

from __future__ import annotations

from datetime import datetime

from flwrmtls.auth.authority import Pin
from flwrmtls.state.database import Database

__all__ = ["IdentityPinTable"]


class IdentityPinTable:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pins = {
            str(row[0]): Pin(key=str(row[1]), name=str(row[2]))
            for row in db.execute("SELECT identity, anchor_key, anchor_name FROM identity_pins")
        }

    def get(self, identity: str) -> Pin | None:
        pin = self._pins.get(identity)
        if pin is None and self._db.shared:  # another link process may have pinned it
            pin = self.reload(identity)
        return pin

    def reload_all(self) -> None:
        """Read every pin again (another link process may have moved any)."""
        self._pins = {
            str(row[0]): Pin(key=str(row[1]), name=str(row[2]))
            for row in self._db.execute(
                "SELECT identity, anchor_key, anchor_name FROM identity_pins"
            )
        }

    def reload(self, identity: str) -> Pin | None:
        """Read ``identity``'s pin again (another link process may have moved it)."""
        row = self._db.execute(
            "SELECT anchor_key, anchor_name FROM identity_pins WHERE identity = :identity",
            {"identity": identity},
        ).first()
        if row is None:
            self._pins.pop(identity, None)
            return None
        pin = self._pins[identity] = Pin(key=str(row[0]), name=str(row[1]))
        return pin

    def put(self, identity: str, pin: Pin, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO identity_pins (identity, anchor_key, anchor_name, pinned_at) "
            "VALUES (:identity, :key, :name, :at) ON CONFLICT(identity) DO UPDATE SET "
            "anchor_key = excluded.anchor_key, anchor_name = excluded.anchor_name, "
            "pinned_at = excluded.pinned_at",
            {"identity": identity, "key": pin.key, "name": pin.name, "at": now.timestamp()},
        )
        self._db.publish("pin", identity)
        self._pins[identity] = pin
