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
* A certificate request that passed its checks is one row of ``enroll_requests``, made in
  the same transaction that uses its token (:meth:`EnrollTable.submit`): a request is never
  stored without its token used, nor a token used without its request. So there is at most
  one request per token, and requests are as few as tokens.
* Renewals of enrolled certificates are kept too, one row each (identity, old and new
  serial, the new key's fingerprint, the chain answered): :mod:`flwrmtls.enroll.renewal`
  reads the latest to bound how often, and keeps a new one only if no other was kept
  meanwhile (:meth:`EnrollTable.renewed`: the check and the INSERT in one transaction under
  the write lock every link replica takes); and :meth:`EnrollTable.successor` finds whether
  a certificate was renewed already, into what, for which key (to answer a node whose answer
  was lost the same chain again, never a new one).
* A request is ``pending`` (waiting for an operator), ``issued`` (its certificate chain kept
  for the node to collect) or ``denied`` (with the operator's reason). Only a pending one can
  be decided, once (:meth:`EnrollTable.decide`, one conditional UPDATE): two operators
  deciding at once cannot both win.

Callers: the Control servicer (create, list, revoke tokens; list and decide requests), the
Enrollment servicer (find and use tokens, submit and read requests).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the records are read by nodes too, which never load a database library
    from flwrmtls.state.database import Database
    from flwrmtls.state.transaction import Transactions

__all__ = ["EnrollTable", "RequestRecord", "RequestState", "Successor", "TokenRecord"]


class RequestState(enum.StrEnum):
    PENDING = "pending"
    ISSUED = "issued"
    DENIED = "denied"


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


@dataclass(frozen=True, slots=True)
class Successor:
    """The renewal a certificate made: into which certificate, when, for which key."""

    serial: str
    """The new certificate's serial, hex."""
    renewed_at: datetime
    key_fingerprint: str
    """``sha256:<hex>`` of the new key's SubjectPublicKeyInfo."""
    chain_pem: bytes
    """The chain answered (empty for a renewal kept before revision 0016)."""


_COLUMNS = (
    "token_id, secret_hash, common_name, organization, organizational_unit, spiffe_id, "
    "created_at, expires_at, created_by, used_at, revoked_at"
)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A certificate request that passed its checks, and what became of it."""

    request_id: int
    token_id: str
    csr_der: bytes
    key_fingerprint: str
    days: int
    peer: str
    state: RequestState
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str = ""
    reason: str = ""
    chain_pem: bytes = b""
    serial: str = ""
    """The issued certificate's serial, hex (empty until issued)."""


_REQUEST_COLUMNS = (
    "request_id, token_id, csr_der, key_fingerprint, days, peer, state, created_at, "
    "decided_at, decided_by, reason, chain_pem, serial"
)


def _request(row: Sequence[Any]) -> RequestRecord:
    created_at = _moment(row[7])
    assert created_at is not None
    return RequestRecord(
        request_id=int(str(row[0])),
        token_id=str(row[1]),
        csr_der=bytes(row[2]),
        key_fingerprint=str(row[3]),
        days=int(str(row[4])),
        peer=str(row[5]),
        state=RequestState(str(row[6])),
        created_at=created_at,
        decided_at=_moment(row[8]),
        decided_by=str(row[9]),
        reason=str(row[10]),
        chain_pem=bytes(row[11] or b""),
        serial=str(row[12]),
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
    def __init__(self, db: Database, transactions: Transactions | None = None) -> None:
        self._db = db
        from flwrmtls.state.transaction import Transactions  # the link's side only

        self._transaction = transactions or Transactions(db)

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

    # --- certificate requests ----------------------------------------------------------------

    def submit(
        self,
        token_id: str,
        now: datetime,
        *,
        csr_der: bytes,
        key_fingerprint: str,
        days: int,
        peer: str,
    ) -> int | None:
        """Use the token and keep its request (pending), in one transaction: the request's
        id, or None when the token was not usable a moment ago (nothing kept)."""
        with self._transaction():
            if not self.use(token_id, now):
                return None
            cursor = self._db.execute(
                "INSERT INTO enroll_requests (token_id, csr_der, key_fingerprint, days, peer, "
                "state, created_at, decided_by, reason, serial) VALUES (:token_id, :csr_der, "
                ":key_fingerprint, :days, :peer, :state, :now, '', '', '') RETURNING request_id",
                {
                    "token_id": token_id, "csr_der": csr_der, "key_fingerprint": key_fingerprint,
                    "days": days, "peer": peer, "state": RequestState.PENDING.value,
                    "now": now.timestamp(),
                },
            )  # fmt: skip
            return int(cursor.scalar_one())

    def request(self, request_id: int) -> RequestRecord | None:
        row = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM enroll_requests WHERE request_id = :request_id",
            {"request_id": request_id},
        ).first()
        return None if row is None else _request(row)

    def requests(self) -> list[RequestRecord]:
        """Every request, newest first."""
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM enroll_requests ORDER BY request_id DESC"
        )
        return [_request(row) for row in rows]

    def decide(
        self,
        request_id: int,
        state: RequestState,
        now: datetime,
        *,
        by: str,
        reason: str = "",
        chain_pem: bytes = b"",
        serial: str = "",
    ) -> bool:
        """Issue or deny a pending request; False if it is not pending (decided already)."""
        cursor = self._db.execute(
            "UPDATE enroll_requests SET state = :state, decided_at = :now, decided_by = :by, "
            "reason = :reason, chain_pem = :chain_pem, serial = :serial "
            "WHERE request_id = :request_id AND state = :pending",
            {
                "state": state.value, "now": now.timestamp(), "by": by, "reason": reason,
                "chain_pem": chain_pem, "serial": serial, "request_id": request_id,
                "pending": RequestState.PENDING.value,
            },
        )  # fmt: skip
        return cursor.rowcount == 1

    # --- renewals ----------------------------------------------------------------------------

    def renewed(
        self,
        identity: str,
        now: datetime,
        *,
        since: datetime,
        old_serial: str,
        new_serial: str,
        key_fingerprint: str,
        peer: str,
        chain_pem: bytes,
    ) -> datetime | None:
        """Keep a renewal of an enrolled certificate unless ``identity`` renewed after
        ``since``: None when kept, else when it last renewed (nothing kept). One transaction
        under the write lock, so two renewals racing, at one link or at two replicas, cannot
        both be kept."""
        with self._transaction():
            last = self.last_renewal(identity)
            if last is not None and last > since:
                return last
            self._db.execute(
                "INSERT INTO enroll_renewals (identity, old_serial, new_serial, "
                "key_fingerprint, renewed_at, peer, chain_pem) VALUES (:identity, :old, :new, "
                ":key, :now, :peer, :chain_pem)",
                {
                    "identity": identity, "old": old_serial, "new": new_serial,
                    "key": key_fingerprint, "now": now.timestamp(), "peer": peer,
                    "chain_pem": chain_pem,
                },
            )  # fmt: skip
        return None

    def successor(self, identity: str, serial: str) -> Successor | None:
        """The renewal ``identity``'s certificate ``serial`` (hex) made; None if that
        certificate never renewed."""
        row = self._db.execute(
            "SELECT new_serial, renewed_at, key_fingerprint, chain_pem FROM enroll_renewals "
            "WHERE identity = :identity AND old_serial = :serial ORDER BY renewed_at LIMIT 1",
            {"identity": identity, "serial": serial},
        ).first()
        if row is None:
            return None
        when = _moment(row[1])
        assert when is not None
        return Successor(str(row[0]), when, str(row[2]), bytes(row[3] or b""))

    def last_renewal(self, identity: str) -> datetime | None:
        """When ``identity`` last renewed its certificate, if ever."""
        row = self._db.execute(
            "SELECT MAX(renewed_at) FROM enroll_renewals WHERE identity = :identity",
            {"identity": identity},
        ).first()
        return _moment(row[0]) if row is not None else None
