"""Where a node keeps its state (``--state-dir``): one node's alone, private, left clean.

Rules:

* The default is ``$FLWRMTLS_HOME/supernode/<name>`` (``~/.flwrmtls/supernode/<name>``), where
  ``<name>`` is 16 hex digits of a SHA-256 over the link's address and the absolute paths of
  the node's credential files (:func:`default_state_dir`): the same node started again with
  the same flags finds the same directory (a rotated certificate keeps its path), and two
  nodes with their own credentials on one host get their own.
* It holds the node's objects (``<state-dir>/objects``, :mod:`flwrmtls.node.storage`) and a
  lock file. Directories flwrmtls makes are 0700 from the moment they exist; ``objects`` is
  flwrmtls's own by name and is tightened (with a warning) if found open; a ``--state-dir`` the
  operator made is never changed: a warning says what to run if it is open to group or others
  (:mod:`flwrmtls.filemodes`).
* One node at a time: a node holds an exclusive lock (``flock``) on ``<state-dir>/supernode.lock``
  while it runs, and the OS drops it when the process ends, however it ends. A second node
  given the same directory is refused at start with one line naming the holder's pid (two
  nodes sharing a store would delete each other's objects).
* At start, every object left in the store (by runs that ended, or a node that stopped, while
  it was down; partial downloads) is deleted, and the count logged: a run still active on
  the link fetches what it needs again. A clean stop leaves the store empty (every run's
  objects go when the node ends its runs).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flwrmtls.errors import InputError
from flwrmtls.filemodes import open_directory_warning, private_directory, tighten
from flwrmtls.home import flwrmtls_home
from flwrmtls.objects.store import ObjectStore

__all__ = ["LOCK_NAME", "StateDir", "default_state_dir", "open_state_dir"]

LOCK_NAME = "supernode.lock"


def default_state_dir(superlink: str, credential_files: list[Path | None]) -> Path:
    """``$FLWRMTLS_HOME/supernode/<name>`` for a node of ``superlink`` with these credential
    files (None for one not given)."""
    parts = [superlink, *(str(path.resolve()) if path else "-" for path in credential_files)]
    name = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return flwrmtls_home() / "supernode" / name


@dataclass
class StateDir:
    path: Path
    objects: ObjectStore
    warnings: list[str]
    """Lines for the node to log (modes found open)."""
    leftover: tuple[int, int]
    """(objects, bytes) found and deleted at start."""
    _lock_fd: int

    def close(self) -> None:
        """Give up the lock (the OS does it too when the process ends)."""
        os.close(self._lock_fd)


def _lock(path: Path, flag: str) -> int:
    lock_path = path / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            f"{flag} {path} is in use by another flwrmtls-supernode (pid {holder}): give each "
            f"node its own {flag}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def open_state_dir(path: Path, *, flag: str = "--state-dir") -> StateDir:
    """Create (0700) or open the state directory, lock it for this process, and empty its
    object store of what an earlier run of the node left. InputError (one line) if it cannot
    be used."""
    warnings: list[str] = []
    try:
        existed = path.is_dir()
        private_directory(path)
        if existed and (warning := open_directory_warning(path)):
            warnings.append(warning)
        fd = _lock(path, flag)
    except (NotADirectoryError, FileExistsError):
        raise InputError(f"{flag} {path} is not a directory") from None
    except PermissionError as error:
        raise InputError(f"{flag} {path}: {error.strerror}: choose a directory this OS user "
                         "may write") from None  # fmt: skip
    objects_dir = path / "objects"
    private_directory(objects_dir)
    if warning := tighten(objects_dir):
        warnings.append(warning)
    store = ObjectStore(objects_dir)
    return StateDir(path, store, warnings, store.clear_all(), fd)
