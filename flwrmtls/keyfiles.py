"""Private key files: readable by whoever runs the process, and nobody else.

Rules kept here:

* A key file is *exposed* when its mode lets other users in: any permission for others
  (``mode & 0o007``), group write or execute, or group read on a file the reading user owns
  (they could ``chmod 600`` it). Group read on a file another user owns is accepted: that is a
  deliberate hand-over (Kubernetes mounts a secret ``root:<fsGroup>`` ``0440`` with an
  ``fsGroup``, cert-manager's csi-driver ``0440``, Debian's ``ssl-cert`` group), as libpq
  accepts ``0640`` keys owned by root.
* An exposed key of a node, a CLI or a link is used, with one warning line naming the file and
  ``chmod 600 FILE``, given once per file and mode per process (a node re-reads its key on
  every rotation: the warning is not repeated each time).
* The CA's own keys (``root.key``, ``issuing.key``) are refused if group or others have any
  permission at all, whoever owns them: the CA tool writes them 0600 and nothing loosens them.
* The mode is the one of the file the path finally names (symlinks followed: Kubernetes'
  ``..data`` links). The check is :func:`key_file_exposure`, a pure function over the mode
  and the owners; only :func:`check_key_file` touches the file system.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from flwrmtls.errors import InputError

__all__ = ["check_ca_key_file", "check_key_file", "key_file_exposure"]

log = logging.getLogger("flwrmtls.keyfiles")

_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def key_file_exposure(mode: int, *, owner: int, reader: int) -> str | None:
    """Who besides the reader may use a key file of this mode, or None if nobody may."""
    others, group = mode & 0o007, mode & 0o070
    if others:
        return "other users"
    if group & 0o030 or (group and owner == reader):
        return "its group"
    return None


def _describe(path: Path, flag: str, mode: int, who: str) -> str:
    return f"{flag}: private key file {path} is open to {who} (mode {stat.S_IMODE(mode):04o})"


def check_key_file(path: Path, flag: str) -> None:
    """Warn once (per file and mode) if the key file at ``path`` is exposed; never refuse.

    A path that cannot be inspected is left to the reader, which names the problem itself.
    """
    try:
        status = path.expanduser().stat()
    except OSError:
        return
    who = key_file_exposure(status.st_mode, owner=status.st_uid, reader=os.geteuid())
    if who is None:
        return
    key = (str(path.expanduser().absolute()), stat.S_IMODE(status.st_mode))
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "%s: chmod 600 %s (in Kubernetes, mount the secret with defaultMode: 0400, or 0440 "
        "with an fsGroup)",
        _describe(path, flag, status.st_mode, who), path,
    )  # fmt: skip


def check_ca_key_file(path: Path, what: str) -> None:
    """Refuse a CA key that group or others may use at all (InputError naming the file)."""
    try:
        status = path.stat()
    except OSError:
        return
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        who = "other users" if mode & 0o007 else "its group"
        raise InputError(
            f"{_describe(path, what, mode, who)}; the CA refuses to sign with a key others "
            f"may have read: chmod 600 {path} (and consider whether it leaked)"
        )
