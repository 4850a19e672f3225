"""Durations as flags give them (``90s``, ``30m``, ``1h``, ``2d``).

Rules: one whole number and one unit (s, m, h or d); anything else is refused with one line
saying what a duration looks like.
"""

from __future__ import annotations

import re
from datetime import timedelta

from flwrmtls.errors import InputError

__all__ = ["parse_duration"]

_DURATION = re.compile(r"(\d{1,6})\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``2d`` (one number, one unit) as a timedelta."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InputError(
            f"{text!r} is not a duration: give a number and a unit, s, m, h or d (e.g. 30m, 1h)"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
