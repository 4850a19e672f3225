"""The EC-key authenticator: the caller is whoever holds the private key of a signed call.

Flower's EC-key mode, made safe against replay. A node signs every call
(:mod:`flwrmtls.auth.callsigning`: method, timestamp, nonce, audience, body digest); the link
checks, in order:

==========================================================  ====================
check                                                       refusal reason
==========================================================  ====================
the call carries the five signature entries                 ``no-signature``,
                                                            ``bad-signature``
the public key is an EC key on P-256, P-384 or P-521        ``wrong-key-type``
the timestamp is at most ``window`` behind the link's       ``stale-timestamp``
clock and at most ``future_skew`` ahead of it
the audience is this link's server key (or, for a bounded   ``wrong-audience``
time after a rotation, the previous one): :class:`Audiences`
the signature verifies over :func:`signed_bytes`            ``bad-signature``
CLI-managed mode: the key is registered, and was            ``unregistered-key``,
registered before the call was signed                       ``node-unregistered``,
                                                            ``stale-timestamp``
this (key, nonce) has not been seen within the window       ``replayed``
==========================================================  ====================

Rules kept here:

* Each distinct key is parsed once (a bounded LRU cache keyed by the metadata string) and
  named by its canonical SubjectPublicKeyInfo, so re-encoding the same key (a compressed
  point, different base64 padding bits) is the same key, the same node and the same nonces.
* A nonce is recorded only for a call that passed every other check: its signature verified
  and (CLI-managed mode) its key is registered. A forged call cannot burn a nonce, and a key
  the link does not accept cannot fill the replay memory.
* A call refused while its key was unregistered (or not yet registered) cannot be replayed
  once the key is registered (again): a registered key's calls must be signed after its
  registration (``signature predates the key's registration``). Registration time is the
  link's clock and the signature's the node's, so a call signed at most ``future_skew`` before
  the registration by a node whose clock runs ahead could still pass once; such a call is one
  the node itself made moments earlier, carried inside TLS.
* The nonces seen are kept per key, bounded, shared with the other links of a federation on
  one database, and never let a replay through: :mod:`flwrmtls.auth.replay` says how.
* A signature names its audience, the link it was made for: what a node signed for another
  link (one it also talks to, or trusts by mistake) is refused here as ``wrong-audience``,
  before the signature is verified or the nonce recorded.
* An open call is judged again (:meth:`EcKeyAuthenticator.recheck`) by its key's registration
  only: its timestamp and nonce were checked once, when it started.
* Time is the ``now`` each call passes in; nothing here reads the wall clock.
* Refusals after the key parsed carry its fingerprint (``SHA256:...``): the link logs that,
  never the key.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    AuthMethod,
    CallCredentials,
    KeySignature,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.callsigning import (
    SIGNATURE_METADATA_KEYS,
    audience_text,
    hash_for_curve,
    is_valid_nonce,
    parse_audience,
    signed_bytes,
    timestamp_ms,
)
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.auth.keyformats import (
    key_fingerprint,
    node_id_for_key,
    parse_node_public_key,
    public_key_der,
)
from flwrmtls.auth.replay import ReplayLimits, ReplayMemory, SharedNonces

__all__ = [
    "Audiences",
    "EcKeyAuthenticator",
    "KeyRegistry",
    "KeyStatus",
    "Registration",
]


class KeyStatus(enum.StrEnum):
    """What the link's node registry says about a public key (CLI-managed mode)."""

    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    """It was registered, then an operator unregistered its node."""
    UNKNOWN = "unknown"
    """Never registered."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A key's entry in the registry."""

    status: KeyStatus
    since: float = 0.0
    """Seconds since the epoch (the link's clock) when the key got this status; 0: unknown."""


KeyRegistry = Callable[[bytes], Registration]
"""Looks a key up by its SubjectPublicKeyInfo (DER)."""


@dataclass(frozen=True, slots=True)
class Audiences:
    """The audiences a link accepts: its current server key and, for a bounded time after the
    server certificate was rotated to a new key, the previous one (signatures in flight, and
    nodes that have not re-learned the key yet)."""

    current: bytes
    previous: bytes | None = None
    previous_until: datetime | None = None

    def accepts(self, audience: bytes, now: datetime) -> bool:
        if audience == self.current:
            return True
        return (
            self.previous is not None
            and audience == self.previous
            and self.previous_until is not None
            and now <= self.previous_until
        )

    def rotated(self, new: bytes, now: datetime, grace: timedelta) -> Audiences:
        """After the server key changed to ``new``: the old one stays accepted for ``grace``."""
        if new == self.current:
            return self
        return Audiences(current=new, previous=self.current, previous_until=now + grace)


_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,15}")
_MAX_ENCODED_KEY = 512
"""A P-521 SubjectPublicKeyInfo is 158 bytes, 212 in base64; longer is not a supported key."""
_MAX_ENCODED_SIGNATURE = 256
"""A P-521 ECDSA signature is at most 139 bytes DER, 188 in base64."""


@dataclass(frozen=True, slots=True)
class _NodeKey:
    key: ec.EllipticCurvePublicKey
    algorithm: ec.ECDSA
    der: bytes
    """Canonical SubjectPublicKeyInfo (uncompressed point), whatever encoding was sent."""
    key_id: bytes
    """16 bytes of SHA-256 over ``der``: the key's half of a nonce-memory entry."""
    fingerprint: str
    node_id: int


def _decode_base64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.1f} s"


class EcKeyAuthenticator:
    """Authenticate nodes by an ECDSA signature over each call.

    ``registry`` None is automatic mode: any valid signature is accepted, and the node is named
    by its key. Otherwise (CLI-managed mode, ``--enable-supernode-auth``) only keys the registry
    reports REGISTERED are.
    """

    name = "ec-key"

    def __init__(
        self,
        registry: KeyRegistry | None = None,
        *,
        audiences: Audiences,
        window: timedelta = timedelta(seconds=60),
        future_skew: timedelta = timedelta(seconds=5),
        key_cache_size: int = 10_000,
        replay: ReplayLimits | None = None,
        shared_nonces: SharedNonces | None = None,
    ) -> None:
        """``window``: how far behind the link's clock a signed timestamp may be;
        ``future_skew``: how far ahead of it (a node's clock running fast); ``shared_nonces``
        (several links): claim (key id, nonce) until a time, False if already claimed."""
        if window <= timedelta(0):
            raise ValueError("the timestamp window must be positive")
        if future_skew < timedelta(0):
            raise ValueError("the future skew must not be negative")
        if key_cache_size < 1:
            raise ValueError("key_cache_size must be at least 1")
        self._registry = registry
        self.audiences = audiences
        """Which link(s) a signature may name; the link replaces it when its key rotates."""
        self._window_ms = window // timedelta(milliseconds=1)
        self._future_ms = future_skew // timedelta(milliseconds=1)
        self._keys: OrderedDict[str, _NodeKey] = OrderedDict()
        self._key_cache_size = key_cache_size
        self._replay = ReplayMemory(self._window_ms, replay or ReplayLimits(), shared_nonces)

    @property
    def window(self) -> timedelta:
        return timedelta(milliseconds=self._window_ms)

    @property
    def cached_keys(self) -> int:
        """How many parsed keys are held now (for tests and metrics)."""
        return len(self._keys)

    @property
    def remembered_nonces(self) -> int:
        """How many (key, nonce) pairs are held now (for tests and metrics)."""
        return self._replay.nonces

    @property
    def remembered_keys(self) -> int:
        """How many keys have nonces held now (for tests and metrics)."""
        return self._replay.keys

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        signature = call.key_signature
        if signature is None:
            raise AuthenticationFailed(
                RefusalReason.NO_SIGNATURE,
                "this link requires EC-key signatures: start the node with "
                "--auth-supernode-private-key",
            )
        missing = [
            name
            for name, value in zip(
                SIGNATURE_METADATA_KEYS,
                (
                    signature.public_key,
                    signature.timestamp,
                    signature.nonce,
                    signature.audience,
                    signature.signature,
                ),
                strict=True,
            )
            if not value
        ]
        if missing:
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE,
                f"incomplete EC-key signature: missing or repeated {', '.join(missing)} metadata",
            )
        node_key = self._node_key(signature.public_key)
        try:
            self._check(call.method, signature, node_key, now)
        except AuthenticationFailed as error:
            error.fingerprint = node_key.fingerprint
            raise
        return Principal(
            kind=PrincipalKind.NODE,
            auth_method=AuthMethod.KEY,
            identity=node_key.fingerprint,
            organisation="",
            node_id=node_key.node_id,
            not_after=None,
            fingerprint=node_key.fingerprint,
        )

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        """An admitted call's key is still registered (its signature was checked once)."""
        if call.key_signature is None:
            raise AuthenticationFailed(RefusalReason.NO_SIGNATURE, "the call carries no signature")
        node_key = self._node_key(call.key_signature.public_key)
        try:
            self._check_registered(node_key, sent_ms=None)
        except AuthenticationFailed as error:
            error.fingerprint = node_key.fingerprint
            raise

    def key_of(self, call: CallCredentials) -> tuple[int | None, str]:
        """(node id, fingerprint) of the key an admitted call signed with; (None, "") if none."""
        if call.key_signature is None:
            return None, ""
        node_key = self._node_key(call.key_signature.public_key)
        return node_key.node_id, node_key.fingerprint

    def _node_key(self, encoded: str) -> _NodeKey:
        """The parsed key for a ``flwrmtls-key`` value: a dict lookup after the first call."""
        node_key = self._keys.get(encoded)
        if node_key is not None:
            self._keys.move_to_end(encoded)
            return node_key
        node_key = self._parse(encoded)
        self._keys[encoded] = node_key
        if len(self._keys) > self._key_cache_size:
            self._keys.popitem(last=False)
        return node_key

    @staticmethod
    def _parse(encoded: str) -> _NodeKey:
        if len(encoded) > _MAX_ENCODED_KEY:
            raise AuthenticationFailed(
                RefusalReason.WRONG_KEY_TYPE,
                "public key is too long for an EC key on P-256, P-384 or P-521",
            )
        try:
            der = _decode_base64(encoded)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise AuthenticationFailed(
                RefusalReason.WRONG_KEY_TYPE, "public key is not base64"
            ) from None
        try:
            key = parse_node_public_key(der)
        except ValueError as error:
            raise AuthenticationFailed(RefusalReason.WRONG_KEY_TYPE, str(error)) from None
        der = public_key_der(key)
        return _NodeKey(
            key=key,
            algorithm=ec.ECDSA(hash_for_curve(key.curve)),
            der=der,
            key_id=hashlib.sha256(der).digest()[:16],
            fingerprint=key_fingerprint(key),
            node_id=node_id_for_key(key),
        )

    def _check(
        self, method: str, signature: KeySignature, node_key: _NodeKey, now: datetime
    ) -> None:
        now_ms = timestamp_ms(now)
        if not _TIMESTAMP.fullmatch(signature.timestamp):
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE,
                "malformed signature timestamp (expected milliseconds since the epoch)",
            )
        sent_ms = int(signature.timestamp)
        self._replay.expire(node_key.key_id, now_ms)
        self._check_timestamp(sent_ms, now_ms)
        if not is_valid_nonce(signature.nonce):
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE, "malformed nonce (expected 32 lowercase hex digits)"
            )
        audience = self._check_audience(signature.audience, now)
        if len(signature.body_digest) == 0:
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE,
                "a client-streaming call must declare its object (flwrmtls-object metadata: "
                "content hash and size) and sign that declaration",
            )
        self._verify(method, signature, node_key, sent_ms, audience)
        self._check_registered(node_key, sent_ms)
        self._replay.remember(node_key.key_id, bytes.fromhex(signature.nonce), sent_ms, now_ms)

    def _check_timestamp(self, sent_ms: int, now_ms: int) -> None:
        behind = now_ms - sent_ms
        accepts = (
            f"the link accepts {_seconds(self._window_ms)} behind and "
            f"{_seconds(self._future_ms)} ahead: check the node's clock"
        )
        if behind > self._window_ms:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                f"signature timestamp too old: {_seconds(behind)} behind the link's clock; "
                + accepts,
            )
        if -behind > self._future_ms:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                f"signature timestamp too far ahead: {_seconds(-behind)} ahead of the link's "
                "clock; " + accepts,
            )
        self._replay.refuse_forgotten(sent_ms)

    def _check_audience(self, text: str, now: datetime) -> bytes:
        try:
            audience = parse_audience(text)
        except ValueError as error:
            raise AuthenticationFailed(RefusalReason.BAD_SIGNATURE, str(error)) from None
        if not self.audiences.accepts(audience, now):
            raise AuthenticationFailed(
                RefusalReason.WRONG_AUDIENCE,
                f"signature made for another link (server key sha256:{text[:16]}...), not "
                f"this one (sha256:{audience_text(self.audiences.current)[:16]}...): a node "
                "learns the link's key from its own TLS connection and signs again",
            )
        return audience

    def _verify(
        self,
        method: str,
        signature: KeySignature,
        node_key: _NodeKey,
        sent_ms: int,
        audience: bytes,
    ) -> None:
        bad = AuthenticationFailed(
            RefusalReason.BAD_SIGNATURE,
            "signature does not verify for this call (method, timestamp, nonce, link and body) "
            "with this key",
        )
        if len(signature.signature) > _MAX_ENCODED_SIGNATURE:
            raise bad
        try:
            message = signed_bytes(
                method, sent_ms, signature.nonce, audience, signature.body_digest
            )
            node_key.key.verify(_decode_base64(signature.signature), message, node_key.algorithm)
        except (InvalidSignature, ValueError, UnicodeEncodeError, binascii.Error):
            raise bad from None

    def _check_registered(self, node_key: _NodeKey, sent_ms: int | None) -> None:
        """The key is registered; with ``sent_ms``, the call was signed after that."""
        if self._registry is None:
            return
        registration = self._registry(node_key.der)
        if registration.status is KeyStatus.UNREGISTERED:
            raise AuthenticationFailed(
                RefusalReason.NODE_UNREGISTERED,
                f"node unregistered (key {node_key.fingerprint}): an operator can re-admit it "
                "with `flwrmtls supernode register <its .pub file>`",
            )
        if registration.status is not KeyStatus.REGISTERED:
            raise AuthenticationFailed(
                RefusalReason.UNREGISTERED_KEY,
                f"public key {node_key.fingerprint} is not registered: run "
                "`flwrmtls supernode register <its .pub file>`",
            )
        if sent_ms is not None and sent_ms < registration.since * 1000:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                "signature predates the key's registration: a call refused before the key was "
                "registered is not accepted afterwards; retry with a fresh signature (and check "
                "the node's clock if this repeats)",
            )
