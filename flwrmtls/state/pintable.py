"""Which CA key each certificate identity was last admitted under (its pin).

Rules:

* One row per identity (a node's or a CLI user's); :mod:`flwrmtls.auth.authority` decides when
  a pin is made or moves, this table only keeps it.
* Pins are read on every certificate call, so the table is mirrored in memory (the link is the
  only writer of its database) and a lookup is a dict access; a write goes to the database
  first, then to the mirror.

Callers: the certificate authenticators of the Fleet and Control listeners.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from flwrmtls.auth.authority import Pin

__all__ = ["IdentityPinTable"]


class IdentityPinTable:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._pins = {
            str(row[0]): Pin(key=str(row[1]), name=str(row[2]))
            for row in db.execute("SELECT identity, anchor_key, anchor_name FROM identity_pins")
        }

    def get(self, identity: str) -> Pin | None:
        return self._pins.get(identity)

    def put(self, identity: str, pin: Pin, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO identity_pins (identity, anchor_key, anchor_name, pinned_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(identity) DO UPDATE SET "
            "anchor_key = excluded.anchor_key, anchor_name = excluded.anchor_name, "
            "pinned_at = excluded.pinned_at",
            (identity, pin.key, pin.name, now.timestamp()),
        )
        self._pins[identity] = pin
