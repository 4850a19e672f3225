"""How many failed authentications a peer address may cause: a token bucket per address.

Rules:

* Keyed by the peer's host (``ipv4:203.0.113.7``), never its port: a new connection does not
  buy a new budget. Callers that present no credential at all (the Enrollment API) are keyed
  by :func:`address_block`: an IPv6 caller's whole /64, which one host holds. Each failed
  authentication takes one token; tokens come back at ``per_second`` up to ``burst``.
  Success takes nothing.
* An address without a token is refused before the authenticator parses or verifies anything
  (:meth:`FailureLimiter.wait`), except for a credential that authenticated from that same
  address before and has not failed since ("proven"): a node behind the same address as a
  flooder keeps working. A proven credential that fails is proven no more, so presenting an
  honest node's public key with bad signatures costs one verification, not one per call.
* Bounded memory: at most ``addresses`` buckets and ``addresses`` proven credentials, the
  least recently used forgotten first (a forgotten bucket is a full one again: an attacker
  would need that many addresses of its own to reset its budget this way).
* Several link processes behind one balancer: each failure is also told to ``observer`` (the
  link announces it to the others), and :meth:`FailureLimiter.failed_elsewhere` takes what
  another process counted, so an address's budget is one for the federation, not one per
  process. A proven credential is named to the others only by its digest with the host.
* Time is the injected clock's monotonic reading; nothing here touches gRPC.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["IPV6_BLOCK", "FailureBudget", "FailureLimiter", "address_block", "peer_host"]

IPV6_BLOCK = 64
"""The IPv6 prefix one end site holds (RFC 6177): an address budget counts for all of it."""


def peer_host(peer: str) -> str:
    """grpc's peer string without the port: ``ipv4:10.0.0.7:40000`` -> ``ipv4:10.0.0.7``."""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


def address_block(host: str) -> str:
    """What a budget for unauthenticated callers is kept per: an IPv4 address, or the /64
    an IPv6 address is in (one host is given a whole /64 and may call from any of its 2^64
    addresses); an IPv4-mapped IPv6 address is its IPv4 address. ``host`` is
    :func:`peer_host`'s; anything else (a Unix socket) is kept as it is."""
    kind, _, address = host.partition(":")
    if kind != "ipv6":
        return host
    try:
        ip = ipaddress.IPv6Address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return f"ipv4:{ip.ipv4_mapped}"
    network = ipaddress.IPv6Network((ip, IPV6_BLOCK), strict=False)
    return f"ipv6:[{network.network_address}]/{IPV6_BLOCK}"


@dataclass(frozen=True, slots=True)
class FailureBudget:
    burst: int = 50
    """Failed authentications an address may cause at once."""
    per_second: float = 5.0
    """How fast its budget comes back."""
    addresses: int = 10_000
    """Addresses (and proven credentials) remembered."""

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_second > 0 or self.addresses < 1:
            raise ValueError("a failure budget needs a positive burst, rate and table size")


class FailureLimiter:
    def __init__(
        self,
        monotonic: Callable[[], float],
        budget: FailureBudget,
        observer: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """``observer(host, pair)``: told of each failure (``pair``: the digest of host and
        credential, empty for none)."""
        self._monotonic = monotonic
        self._budget = budget
        self.observer = observer
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Host -> (tokens, when they were counted)."""
        self._proven: OrderedDict[bytes, None] = OrderedDict()
        """Digests of (host, credential) pairs that authenticated and have not failed since."""

    def _tokens(self, host: str) -> float:
        entry = self._buckets.get(host)
        if entry is None:
            return float(self._budget.burst)
        tokens, counted_at = entry
        elapsed = self._monotonic() - counted_at
        return min(float(self._budget.burst), tokens + elapsed * self._budget.per_second)

    @staticmethod
    def _pair(host: str, credential: bytes) -> bytes:
        return hashlib.sha256(host.encode() + b"\0" + credential).digest()

    def wait(self, host: str, credential: bytes) -> float | None:
        """None if a call from ``host`` presenting ``credential`` may be authenticated, else
        the seconds until its address has budget again."""
        tokens = self._tokens(host)
        if tokens >= 1 or (credential and self._pair(host, credential) in self._proven):
            return None
        return (1 - tokens) / self._budget.per_second

    def failed(self, host: str, credential: bytes) -> None:
        pair = self._pair(host, credential) if credential else b""
        self.failed_elsewhere(host, pair)
        if self.observer is not None:
            self.observer(host, pair)

    def failed_elsewhere(self, host: str, pair: bytes) -> None:
        """A failure from ``host`` (with the credential whose digest is ``pair``, if any),
        counted here or by another link process of the federation."""
        self._buckets[host] = (max(0.0, self._tokens(host) - 1), self._monotonic())
        self._buckets.move_to_end(host)
        if len(self._buckets) > self._budget.addresses:
            self._buckets.popitem(last=False)
        if pair:
            self._proven.pop(pair, None)

    def succeeded(self, host: str, credential: bytes) -> None:
        if not credential:
            return
        pair = self._pair(host, credential)
        self._proven[pair] = None
        self._proven.move_to_end(pair)
        if len(self._proven) > self._budget.addresses:
            self._proven.popitem(last=False)
