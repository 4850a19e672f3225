"""Join tokens, as the link keeps them (:mod:`flwrmtls.enroll.tokens` says what they are and
builds them; this module only keeps them).

Rules:

* One row per token: its id, the SHA-256 of its secret (never the secret), the identity it
  binds, when it was made, by whom, until when it works, and when it was used or revoked.
* Using a token is one conditional UPDATE (:meth:`EnrollTable.use`): it succeeds for one
  request only, if the token is still unused, unrevoked and unexpired at that instant, so two
  requests racing with one token cannot both pass, on one link or on several link replicas
  sharing a PostgreSQL database (the second UPDATE waits for the first's row lock, then
  re-checks its WHERE against the committed row and matches nothing). Never a SELECT then
  an UPDATE.
* Revoking is the same: only a token still usable (neither used, revoked nor expired) can be,
  so a revoke that comes after the use says so instead of pretending.
* Tokens are few (each is an operator's action) and read once per request: no mirror.

Callers: the Control servicer (create, list, revoke), the Enrollment servicer (find, use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flwrmtls.state.database import Database

__all__ = ["EnrollTable", "TokenRecord"]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the link keeps it: never its secret."""

    token_id: str
    secret_hash: bytes
    """SHA-256 of the secret."""
    common_name: str
    organization: str
    organizational_unit: str
    spiffe_id: str
    """The identity the token binds (empty: none)."""
    created_at: datetime
    expires_at: datetime
    created_by: str
    used_at: datetime | None = None
    revoked_at: datetime | None = None


_COLUMNS = (
    "token_id, secret_hash, common_name, organization, organizational_unit, spiffe_id, "
    "created_at, expires_at, created_by, used_at, revoked_at"
)


def _moment(value: object) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(str(value)), UTC)


def _record(row: Sequence[Any]) -> TokenRecord:
    created_at, expires_at = _moment(row[6]), _moment(row[7])
    assert created_at is not None
    assert expires_at is not None
    return TokenRecord(
        token_id=str(row[0]),
        secret_hash=bytes(row[1]),
        common_name=str(row[2]),
        organization=str(row[3]),
        organizational_unit=str(row[4]),
        spiffe_id=str(row[5]),
        created_at=created_at,
        expires_at=expires_at,
        created_by=str(row[8]),
        used_at=_moment(row[9]),
        revoked_at=_moment(row[10]),
    )


class EnrollTable:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, record: TokenRecord) -> bool:
        """Keep a new token; False (nothing kept) if its id is taken."""
        cursor = self._db.execute(
            f"INSERT INTO enroll_tokens ({_COLUMNS}) VALUES (:token_id, :secret_hash, "
            ":common_name, :organization, :organizational_unit, :spiffe_id, :created_at, "
            ":expires_at, :created_by, NULL, NULL) ON CONFLICT(token_id) DO NOTHING",
            {
                "token_id": record.token_id,
                "secret_hash": record.secret_hash,
                "common_name": record.common_name,
                "organization": record.organization,
                "organizational_unit": record.organizational_unit,
                "spiffe_id": record.spiffe_id,
                "created_at": record.created_at.timestamp(),
                "expires_at": record.expires_at.timestamp(),
                "created_by": record.created_by,
            },
        )
        return cursor.rowcount == 1

    def get(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM enroll_tokens WHERE token_id = :token_id",
            {"token_id": token_id},
        ).first()
        return None if row is None else _record(row)

    def all(self) -> list[TokenRecord]:
        """Every token, newest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM enroll_tokens ORDER BY created_at DESC, token_id"
        )
        return [_record(row) for row in rows]

    def use(self, token_id: str, now: datetime) -> bool:
        """Mark the token used at ``now`` if it is usable then; False if it was not (used,
        revoked or expired a moment ago: another request won)."""
        cursor = self._db.execute(
            "UPDATE enroll_tokens SET used_at = :now WHERE token_id = :token_id "
            "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > :now",
            {"token_id": token_id, "now": now.timestamp()},
        )
        return cursor.rowcount == 1

    def revoke(self, token_id: str, now: datetime) -> bool:
        """Revoke a token that is still usable; False if there is no such token."""
        cursor = self._db.execute(
            "UPDATE enroll_tokens SET revoked_at = :now WHERE token_id = :token_id "
            "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > :now",
            {"token_id": token_id, "now": now.timestamp()},
        )
        return cursor.rowcount == 1
