"""The EC-key nonces every link process of one database has accepted (several links only).

Rules:

* :meth:`NonceTable.claim` records (key id, nonce) until the signature's window closes, in one
  statement (``INSERT ... ON CONFLICT DO NOTHING``): the first process to claim a nonce gets
  True, every later claim False, whichever process makes it. Only verified signatures are
  claimed (:mod:`flwrmtls.auth.eckey` claims after it has checked the signature).
* :meth:`NonceTable.expire` deletes the rows whose window has closed (the link's sweep): a
  call that old is refused as stale before any claim.
* One link on SQLite never claims: its in-memory replay memory is the only one there is.
"""

from __future__ import annotations

from flwrmtls.state.database import Database

__all__ = ["NonceTable"]


class NonceTable:
    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, key_id: bytes, nonce: bytes, until: float) -> bool:
        """True if no link process claimed this key's nonce before."""
        result = self._db.execute(
            "INSERT INTO ec_nonces (key_id, nonce, expires_at) VALUES (:key, :nonce, :until) "
            "ON CONFLICT DO NOTHING",
            {"key": key_id, "nonce": nonce, "until": until},
        )
        return result.rowcount == 1

    def expire(self, now: float) -> int:
        """Forget nonces whose window has closed; returns how many."""
        result = self._db.execute("DELETE FROM ec_nonces WHERE expires_at < :now", {"now": now})
        return result.rowcount
