"""Does a file hold a private key? Asked of every file before it goes into an app bundle (by
the CLI) and of every member of a bundle the link receives.

Rules:

- A private key is found when the bytes hold any of:

  * a PEM block whose label ends in ``PRIVATE KEY`` (``PRIVATE KEY``, ``RSA PRIVATE KEY``,
    ``EC PRIVATE KEY``, ``ENCRYPTED PRIVATE KEY``, ``OPENSSH PRIVATE KEY``, ...): the BEGIN
    line, a body of base64 (with the legacy ``Proc-Type``/``DEK-Info`` headers), and the END
    line of the same label, anywhere in the file: alone, inside a Python string, or inside a
    JSON string with its line breaks written ``\\n`` (a cloud service-account file). Markers
    without base64 between them (documentation naming the header) are not a key;
  * DER that cryptography loads as a private key (PKCS#8, PKCS#1, SEC1), or refuses only for
    want of a password (encrypted PKCS#8);
  * a PuTTY key file (``PuTTY-User-Key-File-N:`` with ``Private-Lines:``).

- Pure: bytes in, the kind of key found (for the message) or None out. The key material is
  never returned, logged or echoed.
- Linear in the file's size: a PEM body longer than any real key (64 KiB) is not a match, and
  DER is tried only on files small enough to be one. :func:`private_key_kind_in_stream`
  reads a large file in overlapping windows, so checking it costs a window of memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["private_key_kind", "private_key_kind_in_stream"]

_PEM_PRIVATE = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----"
    rb"([A-Za-z0-9+/=\s\\:,.-]{40,65536}?)"
    rb"-----END \1-----"
)
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{40}")
"""A body has lines of base64 (64 characters each); prose between two markers does not."""
_PUTTY = re.compile(rb"(?m)^PuTTY-User-Key-File-\d+:")
_MAX_DER_BYTES = 64 << 10
"""Larger than any DER private key (an RSA-16384 key is under 10 KiB)."""
_WINDOW = 1 << 20
_OVERLAP = 128 << 10
"""More than a whole PEM block can span (its body is at most 64 KiB), so a window boundary
cannot hide one."""


def _is_der_private_key(data: bytes) -> bool:
    if not data.startswith(b"\x30") or len(data) > _MAX_DER_BYTES:
        return False  # DER private keys are one SEQUENCE
    try:
        serialization.load_der_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        return True  # encrypted: a key all the same, only locked
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def private_key_kind(data: bytes) -> str | None:
    """What kind of private key ``data`` holds (``"a PEM RSA PRIVATE KEY block"``), or None."""
    if b"PRIVATE KEY-----" in data:
        for match in _PEM_PRIVATE.finditer(data):
            if _BASE64_RUN.search(match.group(2)):
                return f"a PEM {match.group(1).decode('ascii')} block"
    if _is_der_private_key(data):
        return "a DER private key"
    if b"Private-Lines:" in data and _PUTTY.search(data):
        return "a PuTTY private key"
    return None


def private_key_kind_in_stream(read: Callable[[int], bytes]) -> str | None:
    """:func:`private_key_kind` of a file read with ``read(size)`` (a file object's read),
    one window at a time; a file of one window is checked whole (DER included)."""
    tail = b""
    while chunk := read(_WINDOW):
        window = tail + chunk
        kind = private_key_kind(window)
        if kind is not None:
            return kind
        tail = window[-_OVERLAP:]
    return None
