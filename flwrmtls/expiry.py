"""When a certificate is about to expire: one rule for the node's own certificate, the link's
log of a node's and ``flwrmtls supernode list``.

Rules:

* A certificate expires soon when less than the warning (days, from
  ``--cert-expiry-warning-days``) is left before its notAfter; an expired one does too.
* The warning is one line: whose certificate, when it expires (UTC, to the minute), in how
  many days (one decimal, never below 0), and what to do: have it reissued.
* How often a line is logged is the caller's (the node: at start, then once a day; the link:
  at each activation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ExpiryWarning"]


@dataclass(frozen=True, slots=True)
class ExpiryWarning:
    days: float
    """Warn when a certificate has less than this many days left."""

    def soon(self, not_after: datetime, now: datetime) -> bool:
        return (not_after - now).total_seconds() < self.days * 86400

    def line(self, whose: str, not_after: datetime, now: datetime) -> str | None:
        """``<whose> expires on ... UTC (in N days): have it reissued``, or None if not soon."""
        if not self.soon(not_after, now):
            return None
        left = max((not_after - now).total_seconds(), 0) / 86400
        when = f"{not_after:%Y-%m-%d %H:%M} UTC"
        return f"{whose} expires on {when} (in {left:.1f} days): have it reissued"
