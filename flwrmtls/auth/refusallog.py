"""Refusals logged once per (who, reason) and interval, and at most so many per address.

"Who" is the certificate's or key's SHA-256 fingerprint, or the peer's address without one;
a line names the peer address, the method, the reason and the fingerprint, never the
certificate itself. Each peer address gets at most ``per_address`` reports per interval
whatever it presents, so a caller with a fresh key per call costs a counter, not a log line
or an audit entry each.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flwrmtls.auth.authenticator import AuthenticationFailed
from flwrmtls.auth.ratelimit import peer_host
from flwrmtls.clock import Clock

__all__ = ["RefusalLog", "Reported"]

log = logging.getLogger("flwrmtls.link.auth")


@dataclass(frozen=True, slots=True)
class Reported:
    """A refusal the log reported (logged, and worth an audit entry)."""

    repeats: int
    """Like refusals (same certificate or key, or peer, and reason) counted since the last."""
    held_back: int
    """Other refusals from the same address left out since its last report, because it
    reached its budget of distinct reports (a fresh key per call, a new certificate...)."""


class RefusalLog:
    """Log each refusal once per (who, reason) and interval, then count repeats silently.

    "Who" is the certificate's or key's fingerprint, or the peer's address without one; and
    each peer address gets at most ``per_address`` reports per interval whatever it presents,
    so a caller with a fresh key per call costs a counter, not a log line or audit entry each.
    Both tables are bounded (least recently used forgotten first).
    """

    def __init__(
        self,
        clock: Clock,
        interval: float = 600.0,
        *,
        per_address: int = 10,
        max_entries: int = 100_000,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._per_address = per_address
        self._max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        """(who, reason) -> (when last reported, like refusals counted since)."""
        self._addresses: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        """Peer host -> (start of its interval, reports in it, refusals held back since its
        last report)."""

    def record(self, peer: str, method: str, error: AuthenticationFailed) -> Reported | None:
        """Log the refusal unless a like one was logged within the interval, or its address
        has used its reports for the interval. None when it was only counted."""
        host = peer_host(peer)
        key = (error.fingerprint or host, error.reason.value)
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        start, reports, held_back = self._addresses.get(host, (now, 0, 0))
        if now - start >= self._interval:
            start, reports = now, 0
        if reports >= self._per_address:
            self._remember(self._addresses, host, (start, reports, held_back + 1))
            return None
        self._remember(self._addresses, host, (start, reports + 1, 0))
        repeats = last[1] if last else 0
        notes = f" ({repeats} more since last report)" if repeats else ""
        if held_back:
            notes += f" ({held_back} other refusals from this address held back)"
        fingerprint = ""
        if error.fingerprint.startswith("SHA256:"):
            fingerprint = f" key {error.fingerprint}"
        elif error.fingerprint:
            fingerprint = f" certificate sha256:{error.fingerprint}"
        log.warning(
            "refused %s calling %s: %s: %s%s%s",
            peer,
            method,
            error.reason.value,
            error.message,
            fingerprint,
            notes,
        )
        self._remember(self._last, key, (now, 0))
        return Reported(repeats, held_back)

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self._max_entries:
            table.popitem(last=False)
