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
* The replay memory is per key and bounded without ever letting a replay through. Each key
  keeps its nonces until their timestamp leaves the window (a call that old is refused as
  stale anyway). A key over ``ReplayLimits.per_key`` forgets its own oldest nonces early and
  then refuses its own timestamps at or before the newest it forgot: only that key's window
  narrows. At most ``ReplayLimits.keys`` keys and ``ReplayLimits.total`` nonces are held; when
  full, a key already held makes room from its own nonces, and a key not held yet is told to
  retry (:class:`~flwrmtls.auth.authenticator.TryLater`) until nonces expire. Nobody's flood
  can make the link refuse another key's fresh calls as stale.
* Several link processes on one database: a nonce this process accepts is also claimed in the
  database (``shared_nonces``, one row per key and nonce until its window closes), and a
  claim another process made first refuses the call as ``replayed``: a signed call replayed
  to another link of the federation is refused as it is to the same one.
* Nonces forgotten because they left the window set a floor for every key (a link clock that
  steps back does not reopen them); that floor is always at least ``window`` behind the
  clock that set it, so no caller can push it into the window.
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
    TryLater,
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

__all__ = [
    "Audiences",
    "EcKeyAuthenticator",
    "KeyRegistry",
    "KeyStatus",
    "Registration",
    "ReplayLimits",
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
class ReplayLimits:
    """Bounds of the replay memory (see the module's rules)."""

    per_key: int = 10_000
    """Nonces one key keeps inside the window; beyond, its own oldest are forgotten early."""
    keys: int = 10_000
    """Keys with nonces held at once."""
    total: int = 1_000_000
    """Nonces held at once, all keys together (about 150 MB at most)."""

    def __post_init__(self) -> None:
        if min(self.per_key, self.keys, self.total) < 1:
            raise ValueError("replay memory limits must be at least 1")


class _KeyNonces:
    """One key's replay memory."""

    __slots__ = ("expiry", "floor_ms", "seen")

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}
        """Nonce -> timestamp (ms) of the call that used it."""
        self.expiry: list[tuple[int, bytes]] = []
        """Heap of (timestamp ms, nonce): the oldest first."""
        self.floor_ms = -1
        """This key's nonces at or before this timestamp may have been forgotten early."""

    def expire(self, oldest_kept_ms: int) -> int:
        """Forget nonces older than ``oldest_kept_ms``; returns the newest forgotten (or -1)."""
        newest = -1
        while self.expiry and self.expiry[0][0] < oldest_kept_ms:
            sent_ms, nonce = heapq.heappop(self.expiry)
            del self.seen[nonce]
            newest = sent_ms
        return newest

    def forget_oldest(self) -> None:
        """Make room early: this key's window narrows past the forgotten timestamp."""
        sent_ms, nonce = heapq.heappop(self.expiry)
        del self.seen[nonce]
        self.floor_ms = max(self.floor_ms, sent_ms)

    def add(self, nonce: bytes, sent_ms: int) -> None:
        self.seen[nonce] = sent_ms
        heapq.heappush(self.expiry, (sent_ms, nonce))


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
        replay: ReplayLimits = ReplayLimits(),
        shared_nonces: Callable[[bytes, bytes, float], bool] | None = None,
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
        self._replay = replay
        self._shared_nonces = shared_nonces
        self._memory: dict[bytes, _KeyNonces] = {}
        """key_id -> that key's nonces."""
        self._nonces = 0
        """Nonces held, all keys together."""
        self._expired_through_ms = -1
        """Nonces at or before this left the window and were forgotten (for every key)."""
        self._swept_at_ms = -1
        """When keys without live nonces were last dropped (at most once a second when full)."""

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
        return self._nonces

    @property
    def remembered_keys(self) -> int:
        """How many keys have nonces held now (for tests and metrics)."""
        return len(self._memory)

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
        memory = self._memory.get(node_key.key_id)
        if memory is not None:
            self._expire(memory, now_ms)
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
        self._remember(node_key, bytes.fromhex(signature.nonce), sent_ms, now_ms)

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
        if sent_ms <= self._expired_through_ms:
            raise _forgotten()

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

    def _remember(self, node_key: _NodeKey, nonce: bytes, sent_ms: int, now_ms: int) -> None:
        """Refuse a replay, else record the nonce in the key's memory (making room if full)."""
        memory = self._memory.get(node_key.key_id)
        if memory is not None:
            if sent_ms <= memory.floor_ms:
                raise _forgotten()
            if nonce in memory.seen:
                raise AuthenticationFailed(
                    RefusalReason.REPLAYED,
                    "replayed call: this nonce was already used with this key; "
                    "a node signs every call with a fresh nonce",
                )
            if len(memory.seen) >= self._replay.per_key or self._nonces >= self._replay.total:
                if not memory.seen:
                    raise _memory_full()
                memory.forget_oldest()
                self._nonces -= 1
        else:
            memory = self._new_memory(node_key.key_id, now_ms)
        until = (sent_ms + self._window_ms) / 1000
        if self._shared_nonces is not None and not self._shared_nonces(
            node_key.key_id, nonce, until
        ):
            raise AuthenticationFailed(
                RefusalReason.REPLAYED,
                "replayed call: this nonce was already used with this key (on another link "
                "of this federation); a node signs every call with a fresh nonce",
            )
        memory.add(nonce, sent_ms)
        self._nonces += 1

    def _expire(self, memory: _KeyNonces, now_ms: int) -> None:
        """Forget a key's nonces that left the window: such a call is refused as stale."""
        held = len(memory.seen)
        newest = memory.expire(now_ms - self._window_ms)
        self._nonces -= held - len(memory.seen)
        self._expired_through_ms = max(self._expired_through_ms, newest)

    def _new_memory(self, key_id: bytes, now_ms: int) -> _KeyNonces:
        """Memory for a key that has none; when the memory is full, drop the keys whose nonces
        all left the window, or ask the caller to retry."""
        full = len(self._memory) >= self._replay.keys or self._nonces >= self._replay.total
        if full and now_ms - self._swept_at_ms >= 1000:
            self._swept_at_ms = now_ms
            for other_id, other in list(self._memory.items()):
                self._expire(other, now_ms)
                if not other.seen:
                    # Its floor is at least `window` old: every call it covers is stale now.
                    del self._memory[other_id]
            full = len(self._memory) >= self._replay.keys or self._nonces >= self._replay.total
        if full:
            raise _memory_full()
        memory = self._memory[key_id] = _KeyNonces()
        return memory

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


def _memory_full() -> TryLater:
    return TryLater(
        "the link's replay memory is full (a flood of signed calls from many keys): "
        "retry in a few seconds"
    )


def _forgotten() -> AuthenticationFailed:
    return AuthenticationFailed(
        RefusalReason.STALE_TIMESTAMP,
        "signature timestamp too old: the link has already forgotten the nonces of calls that "
        "old (its clock stepped back, or this key made more calls than it remembers within "
        "the window); retry with a fresh signature",
    )
