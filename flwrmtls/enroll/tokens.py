"""Join tokens: what an operator hands one new site so that it may ask for one certificate.

Rules kept here (pure functions over values; the link's table keeps the tokens,
:mod:`flwrmtls.state.enrolltable`):

* A token reads ``<id>.<secret>``. The id (8 lowercase hex digits) names the token in
  listings, in ``revoke`` and in the audit trail, and is no secret; the secret is 256 random
  bits (``secrets.token_urlsafe(32)``). The link makes both and answers the token once, to
  the operator who created it; it keeps only the SHA-256 of the secret, so a copy of its
  database lets nobody enroll. A presented secret is hashed and compared with
  ``hmac.compare_digest``.
* A token binds one identity (:class:`Binding`): the Subject the certificate will carry,
  built as ``flwrmtls ca issue node`` builds one (O, OU, CN), and at most one SPIFFE ID (the
  certificate's only URI SAN). Nothing else is ever signed with it.
* Short-lived: an hour unless the operator says otherwise, at most :data:`MAX_TTL`. Single
  use: the first request that passes its checks uses it up, whatever comes of the request (a
  denied request does not give it back). Revocable until used.
* What a presented token meets is one table, :data:`TOKEN_REFUSALS`, over its state
  (:func:`state_of`). A wrong secret and an id the link does not know get the same answer;
  only the holder of the right secret learns that its token was used, expired or revoked.
* Text from outside is bounded before it is parsed (:data:`MAX_TOKEN_TEXT`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from flwrmtls.auth.identity import AmbiguousIdentityError, validate_spiffe_id
from flwrmtls.errors import InputError
from flwrmtls.pki.certsigning import node_subject
from flwrmtls.state.enrolltable import TokenRecord

__all__ = [
    "DEFAULT_TTL",
    "MAX_TOKEN_TEXT",
    "MAX_TTL",
    "TOKEN_REFUSALS",
    "Binding",
    "IssuedToken",
    "TokenRecord",
    "TokenState",
    "new_token",
    "parse_token",
    "secret_matches",
    "state_of",
]

DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=7)
MAX_TOKEN_TEXT = 128
"""Characters of a presented token read at most (a token has 52)."""
_ID = re.compile(r"[0-9a-f]{8}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenState(enum.StrEnum):
    ACTIVE = "active"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


TOKEN_REFUSALS: dict[TokenState, str | None] = {
    TokenState.ACTIVE: None,
    TokenState.USED: "this join token was used already: a token enrolls one site once; ask "
    "the operator for a new one",
    TokenState.EXPIRED: "this join token has expired: ask the operator for a new one",
    TokenState.REVOKED: "this join token was revoked by an operator",
}
"""What a request with a token of each state is told (None: it goes on)."""


@dataclass(frozen=True, slots=True)
class Binding:
    """The identity a token allows: the certificate's Subject (and SPIFFE ID, if any)."""

    common_name: str
    organization: str = ""
    organizational_unit: str = ""
    spiffe_id: str = ""

    def __post_init__(self) -> None:
        self.subject()  # raises InputError for a Subject the CA would not build
        if self.spiffe_id:
            try:
                validate_spiffe_id(self.spiffe_id)
            except AmbiguousIdentityError as error:
                raise InputError(f"--spiffe-id: {error}") from None

    def subject(self) -> x509.Name:
        """The certificate's Subject, as ``flwrmtls ca issue node`` builds it."""
        if not self.common_name.strip():
            raise InputError("a node's common name may not be empty")
        return node_subject(
            self.common_name, self.organization or None, self.organizational_unit or None
        )

    def subject_alternative_names(self) -> list[x509.GeneralName]:
        """The SAN the certificate carries: the SPIFFE ID, or none."""
        return [x509.UniformResourceIdentifier(self.spiffe_id)] if self.spiffe_id else []

    def describe(self) -> str:
        """``CN=site-1,O=Hospital A`` (and ``, SPIFFE ID spiffe://...``)."""
        text = self.subject().rfc4514_string()
        return f"{text}, SPIFFE ID {self.spiffe_id}" if self.spiffe_id else text


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: the text answered once, and the record kept."""

    text: str
    record: TokenRecord


def new_token(binding: Binding, now: datetime, ttl: timedelta, created_by: str) -> IssuedToken:
    """A fresh token for ``binding``, valid for ``ttl`` from ``now``."""
    if not timedelta(0) < ttl <= MAX_TTL:
        raise InputError(f"a join token lives more than 0 s and at most {MAX_TTL.days} days")
    token_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(
        token_id=token_id,
        secret_hash=_hash(secret),
        common_name=binding.common_name,
        organization=binding.organization,
        organizational_unit=binding.organizational_unit,
        spiffe_id=binding.spiffe_id,
        created_at=now,
        expires_at=now + ttl,
        created_by=created_by,
    )
    return IssuedToken(f"{token_id}.{secret}", record)


def binding_of(record: TokenRecord) -> Binding:
    """The identity ``record`` binds."""
    return Binding(
        common_name=record.common_name,
        organization=record.organization,
        organizational_unit=record.organizational_unit,
        spiffe_id=record.spiffe_id,
    )


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a presented token; None when it is not one (whitespace around it, as
    a file holds it, is ignored)."""
    if len(text) > MAX_TOKEN_TEXT:
        return None
    token_id, dot, secret = text.strip().partition(".")
    if not dot or not _ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        return None
    return token_id, secret


def secret_matches(record: TokenRecord, secret: str) -> bool:
    """Whether ``secret`` is ``record``'s, in constant time."""
    return hmac.compare_digest(record.secret_hash, _hash(secret))


def state_of(record: TokenRecord, now: datetime) -> TokenState:
    """The token's state at ``now``: revoked and used are final; then its expiry."""
    if record.revoked_at is not None:
        return TokenState.REVOKED
    if record.used_at is not None:
        return TokenState.USED
    if now >= record.expires_at:
        return TokenState.EXPIRED
    return TokenState.ACTIVE
