"""The EC-key authenticator: the caller is whoever holds the private key of a signed call.

Flower's EC-key mode, made safe against replay. A node signs every call
(:mod:`flwrmtls.auth.signing`: method, timestamp, nonce, body digest); the link checks, in order:

==========================================================  ====================
check                                                       refusal reason
==========================================================  ====================
the call carries the four signature entries                 ``no-signature``,
                                                            ``bad-signature``
the public key is an EC key on P-256, P-384 or P-521        ``wrong-key-type``
the timestamp is within ``window`` of the link's clock,     ``stale-timestamp``
either way
the signature verifies over :func:`signed_bytes`            ``bad-signature``
this (key, nonce) has not been seen within the window       ``replayed``
CLI-managed mode: the key is registered                     ``unregistered-key``,
                                                            ``node-unregistered``
==========================================================  ====================

Rules kept here:

* Each distinct key is parsed once (a bounded LRU cache keyed by the metadata string) and
  named by its canonical SubjectPublicKeyInfo, so re-encoding the same key (a compressed
  point, different base64 padding bits) is the same key, the same node and the same nonces.
* The signature is verified before the nonce is recorded: a forged call cannot burn a nonce.
  A verified call's nonce is recorded before the registry is asked, so a call refused as
  unregistered cannot be replayed after the key is registered again.
* The nonce memory is bounded without weakening it. An entry is forgotten only once its
  timestamp has left the window, and a call that old is refused as stale anyway. If the hard
  cap forces the oldest entries out early, the authenticator also refuses every timestamp at
  or before the newest one it forgot (``too old``): under a flood the window narrows, it never
  lets a replay through. The same floor covers a link clock that steps backwards.
* Time is the ``now`` each call passes in; nothing here reads the wall clock.
* Refusals after the key parsed carry its fingerprint (``SHA256:...``): the link logs that,
  never the key.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import heapq
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
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.auth.keys import (
    key_fingerprint,
    node_id_for_key,
    parse_node_public_key,
    public_key_der,
)
from flwrmtls.auth.signing import (
    SIGNATURE_METADATA_KEYS,
    hash_for_curve,
    is_valid_nonce,
    signed_bytes,
    timestamp_ms,
)

__all__ = ["EcKeyAuthenticator", "KeyRegistry", "KeyStatus"]


class KeyStatus(enum.StrEnum):
    """What the link's node registry says about a public key (CLI-managed mode)."""

    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    """It was registered, then an operator unregistered its node."""
    UNKNOWN = "unknown"
    """Never registered."""


KeyRegistry = Callable[[bytes], KeyStatus]
"""Looks a key up by its SubjectPublicKeyInfo (DER)."""

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
        window: timedelta = timedelta(seconds=60),
        key_cache_size: int = 10_000,
        max_nonces: int = 1_000_000,
    ) -> None:
        if window <= timedelta(0):
            raise ValueError("the timestamp window must be positive")
        if key_cache_size < 1 or max_nonces < 1:
            raise ValueError("key_cache_size and max_nonces must be at least 1")
        self._registry = registry
        self._window_ms = window // timedelta(milliseconds=1)
        self._keys: OrderedDict[str, _NodeKey] = OrderedDict()
        self._key_cache_size = key_cache_size
        self._max_nonces = max_nonces
        self._nonces: dict[bytes, int] = {}
        """key_id + nonce -> timestamp (ms) of the call that used it."""
        self._nonce_expiry: list[tuple[int, bytes]] = []
        """Heap of (timestamp ms, entry): the oldest timestamp first."""
        self._forgotten_through_ms = -1
        """Every nonce with a timestamp at or before this may have been forgotten."""

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
        return len(self._nonces)

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
                (signature.public_key, signature.timestamp, signature.nonce, signature.signature),
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
            self._check(call.method, signature, node_key, timestamp_ms(now))
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

    def _check(self, method: str, signature: KeySignature, node_key: _NodeKey, now_ms: int) -> None:
        if not _TIMESTAMP.fullmatch(signature.timestamp):
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE,
                "malformed signature timestamp (expected milliseconds since the epoch)",
            )
        sent_ms = int(signature.timestamp)
        self._expire(now_ms)
        self._check_timestamp(sent_ms, now_ms)
        if not is_valid_nonce(signature.nonce):
            raise AuthenticationFailed(
                RefusalReason.BAD_SIGNATURE, "malformed nonce (expected 32 lowercase hex digits)"
            )
        self._verify(method, signature, node_key, sent_ms)
        entry = node_key.key_id + bytes.fromhex(signature.nonce)
        if entry in self._nonces:
            raise AuthenticationFailed(
                RefusalReason.REPLAYED,
                "replayed call: this nonce was already used with this key; "
                "a node signs every call with a fresh nonce",
            )
        self._remember(entry, sent_ms)
        self._check_registered(node_key)

    def _check_timestamp(self, sent_ms: int, now_ms: int) -> None:
        behind = now_ms - sent_ms
        window = f"the link accepts {_seconds(self._window_ms)} either way: check the node's clock"
        if behind > self._window_ms:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                f"signature timestamp too old: {_seconds(behind)} behind the link's clock; "
                + window,
            )
        if -behind > self._window_ms:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                f"signature timestamp too far ahead: {_seconds(-behind)} ahead of the link's "
                "clock; " + window,
            )
        if sent_ms <= self._forgotten_through_ms:
            raise AuthenticationFailed(
                RefusalReason.STALE_TIMESTAMP,
                "signature timestamp too old: the link has already forgotten the nonces of "
                "calls that old (its clock stepped back, or a flood of calls filled its "
                "replay memory); retry with a fresh signature",
            )

    def _verify(
        self, method: str, signature: KeySignature, node_key: _NodeKey, sent_ms: int
    ) -> None:
        bad = AuthenticationFailed(
            RefusalReason.BAD_SIGNATURE,
            "signature does not verify for this call (method, timestamp, nonce and body) "
            "with this key",
        )
        if len(signature.signature) > _MAX_ENCODED_SIGNATURE:
            raise bad
        try:
            message = signed_bytes(method, sent_ms, signature.nonce, signature.body_digest)
            node_key.key.verify(_decode_base64(signature.signature), message, node_key.algorithm)
        except (InvalidSignature, ValueError, UnicodeEncodeError, binascii.Error):
            raise bad from None

    def _expire(self, now_ms: int) -> None:
        """Forget nonces whose timestamp has left the window: such a call is refused as stale."""
        oldest_kept_ms = now_ms - self._window_ms
        heap = self._nonce_expiry
        while heap and heap[0][0] < oldest_kept_ms:
            sent_ms, entry = heapq.heappop(heap)
            del self._nonces[entry]
            self._forgotten_through_ms = max(self._forgotten_through_ms, sent_ms)

    def _remember(self, entry: bytes, sent_ms: int) -> None:
        self._nonces[entry] = sent_ms
        heapq.heappush(self._nonce_expiry, (sent_ms, entry))
        while len(self._nonces) > self._max_nonces:
            evicted_ms, evicted = heapq.heappop(self._nonce_expiry)
            del self._nonces[evicted]
            self._forgotten_through_ms = max(self._forgotten_through_ms, evicted_ms)

    def _check_registered(self, node_key: _NodeKey) -> None:
        if self._registry is None:
            return
        status = self._registry(node_key.der)
        if status is KeyStatus.REGISTERED:
            return
        if status is KeyStatus.UNREGISTERED:
            raise AuthenticationFailed(
                RefusalReason.NODE_UNREGISTERED,
                f"node unregistered (key {node_key.fingerprint})",
            )
        raise AuthenticationFailed(
            RefusalReason.UNREGISTERED_KEY,
            f"public key {node_key.fingerprint} is not registered: run "
            "`flwrmtls supernode register <its .pub file>`",
        )
