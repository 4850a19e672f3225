"""A CRL in force that will lapse soon: the warning before the link fails closed.

Rules kept here:

* Past a CRL's next update the link refuses every certificate of its issuer (fail closed:
  :mod:`flwrmtls.auth.revocation`; a stale CRL cannot say what was revoked since). So it warns
  before: a CRL in force (coverage state ``current`` or ``kept``) whose next update is within
  the warning window gets a warning line, which ``supernode list`` shows on its row and the
  link logs.
* The window is the smaller of ``--crl-expiry-warning-hours`` (default 48) and a quarter of
  the CRL's lifetime (next update - this update): a CRL renewed on a sane schedule (daily for
  the default 7-day CRL) never warns, and one whose renewal stopped warns in time (a 7-day
  CRL: 42 hours before, five days after its last renewal; a 1-day CRL: 6 hours before).
* The link logs a warning when a CRL enters its window and then every
  :data:`LAPSE_LOG_INTERVAL` until it is renewed (a later next update starts afresh) or lapses
  (then :mod:`flwrmtls.auth.revocation` logs the refusal itself).
* :func:`lapse_warning` and :func:`with_lapse_warning` are pure; :class:`LapseLog` only
  remembers when each CRL was last logged. A metrics endpoint (none yet) would export
  ``next_update - now`` of :meth:`flwrmtls.link.server.Link.revocation_coverage` rows as a
  gauge per issuer and scope: the same rows, the same clock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from flwrmtls.auth.crlcoverage import OCSP_KIND, CoverageRow, CoverageState

__all__ = [
    "DEFAULT_LAPSE_WARNING",
    "LAPSE_LOG_INTERVAL",
    "LapseLog",
    "lapse_warning",
    "lapse_window",
    "with_lapse_warning",
]

log = logging.getLogger("flwrmtls.auth.revocation")

DEFAULT_LAPSE_WARNING = timedelta(hours=48)
LAPSE_LOG_INTERVAL = timedelta(hours=1)
_IN_FORCE = (CoverageState.CURRENT, CoverageState.KEPT)


def lapse_window(
    this_update: datetime | None, next_update: datetime, warning: timedelta
) -> timedelta:
    """How long before ``next_update`` a CRL is said to expire soon."""
    if this_update is None or next_update <= this_update:
        return warning
    return min(warning, (next_update - this_update) / 4)


def _duration(left: timedelta) -> str:
    seconds = left.total_seconds()
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{max(seconds, 60) / 60:.0f} min"


def lapse_warning(row: CoverageRow, now: datetime, warning: timedelta) -> str | None:
    """The warning for ``row`` if its CRL is in force and lapses within its window (never for
    an OCSP row: the link asks for a new answer itself)."""
    if row.kind == OCSP_KIND:
        return None
    if row.state not in _IN_FORCE or row.next_update is None or now >= row.next_update:
        return None
    left = row.next_update - now
    if left > lapse_window(row.this_update, row.next_update, warning):
        return None
    return (
        f"expires in {_duration(left)} (next update {row.next_update:%Y-%m-%d %H:%M} UTC): "
        "renew it before (`flwrmtls ca crl`, or your CA's), or the link refuses every "
        "certificate of this issuer from then on"
    )


def with_lapse_warning(row: CoverageRow, now: datetime, warning: timedelta) -> CoverageRow:
    """``row`` with :attr:`CoverageRow.expiry_warning` set (or cleared) for ``now``."""
    text = lapse_warning(row, now, warning) or ""
    return row if text == row.expiry_warning else dataclasses.replace(row, expiry_warning=text)


class LapseLog:
    """Logs each CRL in its window when it enters it, then every ``interval``."""

    def __init__(self, interval: timedelta = LAPSE_LOG_INTERVAL) -> None:
        self._interval = interval
        self._logged: dict[tuple[str, str, datetime], datetime] = {}
        """(issuer, scope, next update) -> when last logged."""

    def log_due(self, rows: Iterable[CoverageRow], now: datetime) -> list[str]:
        """Log (and return) the warnings of ``rows`` that are due at ``now``."""
        due = []
        warned = set()
        for row in rows:
            if not row.expiry_warning or row.next_update is None:
                continue
            key = (row.issuer, row.scope, row.next_update)
            warned.add(key)
            last = self._logged.get(key)
            if last is not None and now - last < self._interval:
                continue
            self._logged[key] = now
            line = f"CRL for issuer {row.issuer} ({row.scope}) {row.expiry_warning}"
            log.warning("%s", line)
            due.append(line)
        for key in self._logged.keys() - warned:  # renewed or lapsed: forget it
            del self._logged[key]
        return due
