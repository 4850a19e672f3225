"""The EC-key authenticator's memory of the nonces it accepted: no signed call twice.

A nonce is remembered only once its call passed every other check
(:mod:`flwrmtls.auth.eckey`), per key (the canonical SubjectPublicKeyInfo's digest) with the
call's timestamp. Rules:

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
* Time is the ``now_ms`` each call passes in (the link's clock, in milliseconds since the
  epoch); ``window_ms`` is how far behind it a signed timestamp may be.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from flwrmtls.auth.authenticator import AuthenticationFailed, RefusalReason, TryLater

__all__ = ["ReplayLimits", "ReplayMemory", "SharedNonces"]

SharedNonces = Callable[[bytes, bytes, float], bool]
"""``claim(key id, nonce, until)``: False when another link of the federation claimed it."""


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


class ReplayMemory:
    """The nonces of every key, within the limits (see the module's rules)."""

    def __init__(
        self, window_ms: int, limits: ReplayLimits, shared: SharedNonces | None = None
    ) -> None:
        self._window_ms = window_ms
        self._limits = limits
        self._shared = shared
        self._memory: dict[bytes, _KeyNonces] = {}
        """key_id -> that key's nonces."""
        self._nonces = 0
        """Nonces held, all keys together."""
        self._expired_through_ms = -1
        """Nonces at or before this left the window and were forgotten (for every key)."""
        self._swept_at_ms = -1
        """When keys without live nonces were last dropped (at most once a second when full)."""

    @property
    def nonces(self) -> int:
        """How many (key, nonce) pairs are held now."""
        return self._nonces

    @property
    def keys(self) -> int:
        """How many keys have nonces held now."""
        return len(self._memory)

    def expire(self, key_id: bytes, now_ms: int) -> None:
        """Forget the key's nonces that left the window: a call that old is stale anyway."""
        memory = self._memory.get(key_id)
        if memory is not None:
            self._expire(memory, now_ms)

    def refuse_forgotten(self, sent_ms: int) -> None:
        """Refuse a call signed at or before the newest nonce forgotten for every key (its
        nonce could no longer be told apart from a replay)."""
        if sent_ms <= self._expired_through_ms:
            raise _forgotten()

    def remember(self, key_id: bytes, nonce: bytes, sent_ms: int, now_ms: int) -> None:
        """Refuse a replay, else record the nonce in the key's memory (making room if full)."""
        memory = self._memory.get(key_id)
        if memory is not None:
            if sent_ms <= memory.floor_ms:
                raise _forgotten()
            if nonce in memory.seen:
                raise AuthenticationFailed(
                    RefusalReason.REPLAYED,
                    "replayed call: this nonce was already used with this key; "
                    "a node signs every call with a fresh nonce",
                )
            if len(memory.seen) >= self._limits.per_key or self._nonces >= self._limits.total:
                if not memory.seen:
                    raise _memory_full()
                memory.forget_oldest()
                self._nonces -= 1
        else:
            memory = self._new_memory(key_id, now_ms)
        until = (sent_ms + self._window_ms) / 1000
        if self._shared is not None and not self._shared(key_id, nonce, until):
            raise AuthenticationFailed(
                RefusalReason.REPLAYED,
                "replayed call: this nonce was already used with this key (on another link "
                "of this federation); a node signs every call with a fresh nonce",
            )
        memory.add(nonce, sent_ms)
        self._nonces += 1

    def _expire(self, memory: _KeyNonces, now_ms: int) -> None:
        held = len(memory.seen)
        newest = memory.expire(now_ms - self._window_ms)
        self._nonces -= held - len(memory.seen)
        self._expired_through_ms = max(self._expired_through_ms, newest)

    def _new_memory(self, key_id: bytes, now_ms: int) -> _KeyNonces:
        """Memory for a key that has none; when the memory is full, drop the keys whose nonces
        all left the window, or ask the caller to retry."""
        full = len(self._memory) >= self._limits.keys or self._nonces >= self._limits.total
        if full and now_ms - self._swept_at_ms >= 1000:
            self._swept_at_ms = now_ms
            for other_id, other in list(self._memory.items()):
                self._expire(other, now_ms)
                if not other.seen:
                    # Its floor is at least `window` old: every call it covers is stale now.
                    del self._memory[other_id]
            full = len(self._memory) >= self._limits.keys or self._nonces >= self._limits.total
        if full:
            raise _memory_full()
        memory = self._memory[key_id] = _KeyNonces()
        return memory


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
