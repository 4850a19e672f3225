"""Sizes in bytes as flags give them (``500M``, ``8G``) and as lines print them.

Rules: units are binary (``1G`` = 1024^3 bytes); a size is a positive whole number of bytes;
anything else is refused with one line naming the flag.
"""

from __future__ import annotations

import re

from flwrmtls.errors import InputError

__all__ = ["format_size", "parse_size"]

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, flag: str) -> int:
    """A positive number of bytes: ``1073741824``, ``1024M``, ``1G``, ``1GiB`` (binary units)."""
    match = _SIZE.match(text.strip())
    size = int(match[1]) * _UNITS[match[2].upper()] if match else 0
    if size <= 0:
        raise InputError(
            f"{flag} {text!r} is not a size: give a positive number of bytes, or one with K, M, "
            "G or T (binary: 1G = 1024^3 bytes)"
        )
    return size


def format_size(size: int) -> str:
    """``size`` in the largest unit that divides it exactly (``8 GiB``), else in bytes."""
    for unit in ("T", "G", "M", "K"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]} {unit}iB"
    return f"{size} bytes"
