"""How the link uses OCSP, as its operator chose (``--ocsp``, ``--ocsp-unreachable``,
``--ocsp-timeout``, ``--ocsp-refresh-interval``): a value the flags make once, which the
OCSP store (:mod:`flwrmtls.auth.ocspstore`) and its refresher read and never change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flwrmtls.auth.ocspcheck import OcspMode

__all__ = ["OcspPolicy", "Unreachable"]


class Unreachable(enum.StrEnum):
    """``--ocsp-unreachable``: a connected certificate whose answer cannot be refreshed."""

    FAIL_CLOSED = "fail-closed"
    KEEP_LAST_GOOD = "keep-last-good"


@dataclass(frozen=True, slots=True)
class OcspPolicy:
    """How the link uses OCSP (``--ocsp``, ``--ocsp-unreachable``, ``--ocsp-timeout``,
    ``--ocsp-refresh-interval``)."""

    mode: OcspMode = OcspMode.OFF
    url: str | None = None
    """The responder ``--ocsp URL`` names (mode ``url``)."""
    unreachable: Unreachable = Unreachable.FAIL_CLOSED
    timeout: float = 5.0
    """Seconds one question to a responder may take, connecting and reading included."""
    refresh_interval: float = 300.0
    """Seconds after which an answer is asked for again."""

    @property
    def enabled(self) -> bool:
        return self.mode is not OcspMode.OFF

    def describe(self) -> str:
        whom = (
            f"node and CLI certificates at {self.url}, CA certificates at the responder their "
            "AIA names"
            if self.mode is OcspMode.URL
            else "each certificate at the responder its AIA names"
        )
        return (
            f"OCSP: {whom}; refreshed every {self.refresh_interval:g} s; responder "
            f"unreachable: {self.unreachable.value}"
        )
