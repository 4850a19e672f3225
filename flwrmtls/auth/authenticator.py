"""The one interface every way of authenticating a caller implements.

An authenticator is a pure function of what a call presents (:class:`CallCredentials`) and the
time: it returns the :class:`Principal` making the call or raises :class:`AuthenticationFailed`.
It never touches gRPC; :mod:`flwrmtls.auth.interceptor` collects the credentials from a gRPC
call and applies the policy table to the principal.

A call that stays open (a long poll, a followed log stream, an object transfer) is judged
again while it runs: :meth:`Authenticator.recheck` answers whether credentials admitted earlier
are still admitted now (a CRL, a CA bundle, an unregister or an expiry may have ended them),
without repeating what may only happen once per call (an EC-key signature's nonce).

Implementations: :class:`flwrmtls.auth.mtls.MtlsAuthenticator` (certificates verified against a
CA chain) and :class:`OpenAuthenticator` (a link without client authentication).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.wire.refusals import Refusal

__all__ = [
    "AuthMethod",
    "AuthenticationFailed",
    "Authenticator",
    "CallCredentials",
    "DecisionPending",
    "KeySignature",
    "OpenAuthenticator",
    "Principal",
    "RefusalReason",
    "TryLater",
]


class AuthMethod(enum.StrEnum):
    CERTIFICATE = "certificate"
    KEY = "key"
    TOKEN = "token"  # noqa: S105 - an auth method name, not a secret
    NONE = "none"


class RefusalReason(enum.StrEnum):
    """Why a caller was refused: a stable code, logged and sent to the caller."""

    NO_CERTIFICATE = "no-certificate"
    UNTRUSTED = "untrusted"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    CRL_UNAVAILABLE = "crl-unavailable"
    WRONG_USAGE = "wrong-usage"
    AMBIGUOUS_IDENTITY = "ambiguous-identity"
    NOT_PERMITTED = "not-permitted"
    NO_TOKEN = "no-token"  # noqa: S105 - a refusal reason
    NO_SIGNATURE = "no-signature"
    BAD_SIGNATURE = "bad-signature"
    STALE_TIMESTAMP = "stale-timestamp"
    REPLAYED = "replayed"
    WRONG_KEY_TYPE = "wrong-key-type"
    UNREGISTERED_KEY = "unregistered-key"
    NODE_UNREGISTERED = "node-unregistered"
    WRONG_AUDIENCE = "wrong-audience"
    """An EC-key signature made for another link (another server key)."""
    KEY_NOT_BOUND = "key-not-bound"
    """certificate+key: the EC key is not registered to the certificate's node."""
    INVALID_TOKEN = "invalid-token"  # noqa: S105 - a refusal reason
    RATE_LIMITED = "rate-limited"
    """Not an authentication: the peer's address caused too many failed ones lately."""


@dataclass(frozen=True, slots=True)
class KeySignature:
    """What an EC-key node attaches to a call (metadata), plus the digest of the request body
    the link computed from the bytes it received. See :mod:`flwrmtls.auth.callsigning`."""

    public_key: str
    """``flwrmtls-key``: base64 of the key's SubjectPublicKeyInfo (DER)."""
    timestamp: str
    """``flwrmtls-timestamp``: milliseconds since the epoch, decimal."""
    nonce: str
    """``flwrmtls-nonce``: 32 lowercase hex digits (128 random bits)."""
    audience: str
    """``flwrmtls-audience``: the link the node signed for, 64 lowercase hex digits."""
    signature: str
    """``flwrmtls-signature``: base64 of the DER ECDSA signature over the signed bytes."""
    body_digest: bytes
    """SHA-256 of the serialized request; for client-streaming calls, of the object the call
    declares (:func:`flwrmtls.auth.callsigning.declared_object_digest`), or empty without one."""


@dataclass(frozen=True, slots=True)
class CallCredentials:
    """What one call presents, as raw values taken from the transport."""

    method: str
    peer: str
    leaf_pem: bytes | None
    """The client certificate the TLS handshake verified, PEM (grpc's ``x509_pem_cert``)."""
    chain_pem: bytes | None
    """What the client sent after its leaf, PEM, unverified (``x509_pem_cert_chain``)."""
    token: str | None = None
    """An app process's run token (``flwrmtls-run-token`` metadata), if any."""
    key_signature: KeySignature | None = None
    """An EC-key node's signature over this call, if it sent one."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one call."""

    kind: PrincipalKind
    auth_method: AuthMethod
    identity: str
    organisation: str
    node_id: int | None
    """Derived from the identity; None when the link has no client authentication."""
    not_after: datetime | None
    """When the caller's credentials stop being valid (the chain's earliest expiry)."""
    fingerprint: str
    """SHA-256 of the leaf certificate, hex; empty without a certificate."""
    run_id: int | None = None
    """The run an app process's token belongs to; None for certificates."""
    anchor_key: str = ""
    """Certificates: SHA-256 (hex) of the key of the trust anchor the chain ended at, which
    :mod:`flwrmtls.auth.authority` maps to the CA that owns the identity; else empty."""


class AuthenticationFailed(Exception):
    """The caller is not who the link accepts; ``str()`` is sent to the caller.

    ``reason`` is a :class:`RefusalReason` (a verdict on the credentials: UNAUTHENTICATED
    unless the interceptor's table says otherwise), or a code of the error catalogue
    (:class:`~flwrmtls.wire.refusals.Refusal`) when the link cannot judge for its own reasons
    (``ocsp-unavailable``): answered with that code's row (UNAVAILABLE: clients retry), and not
    counted against the caller's failed-authentication budget."""

    def __init__(
        self,
        reason: RefusalReason | Refusal,
        message: str,
        fingerprint: str = "",
        node_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fingerprint = fingerprint
        self.node_id = node_id
        """The node refused, when the link verified who it is (a revoked or expired node's
        chain verified): the link then shows the refusal as that node's status."""


class TryLater(Exception):
    """The link cannot decide about this call now (a bound is reached); the caller should
    retry later. ``str()`` is sent to the caller, who is told UNAVAILABLE (nodes retry)."""


class DecisionPending(TryLater):
    """The link is finding out what it needs to decide (an OCSP answer for a certificate it
    sees for the first time) and will know shortly. The interceptor awaits :meth:`wait`
    (bounded; the event loop serves other calls meanwhile) and judges the call once more;
    still undecided, the call is answered as :class:`TryLater`."""

    def __init__(self, message: str, ready: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self._ready = ready

    async def wait(self) -> None:
        """Return once the answer is in, or its bound passed."""
        await self._ready()


class Authenticator(Protocol):
    """Decide who a call comes from. Must be cheap: it runs on every call."""

    @property
    def name(self) -> str: ...

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        """Return the caller, or raise AuthenticationFailed."""
        ...

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        """Raise AuthenticationFailed if a call this authenticator admitted as ``principal``
        is no longer admitted. Cheap (cached verification, dict lookups), no side effects."""
        ...


class OpenAuthenticator:
    """No client authentication: every caller is anonymous, and the policy lets it do anything.

    Only for links started without ``--ssl-require-client-auth`` (development, or a network
    that authenticates by other means); the link warns loudly when it runs this way.
    """

    name = "none"

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        return Principal(
            kind=PrincipalKind.ANONYMOUS,
            auth_method=AuthMethod.NONE,
            identity=f"anonymous@{call.peer}",
            organisation="",
            node_id=None,
            not_after=None,
            fingerprint="",
        )

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        return None
