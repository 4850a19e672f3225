"""What holds state or secrets is private to the OS account that runs flwrmtls.

Rules:

* flwrmtls creates the places that hold state private from the moment they exist: directories
  0700, files 0600 (the link's database, its object directory, the database's directory when
  the link makes it, ``$FLWRMTLS_HOME`` and config.toml, the node's state directory and its
  ``objects``, its lock file). Nothing is created open and tightened later.
* The link and the node run with umask 077 (:func:`restrict_umask`, first thing in their
  ``main``), and so do the app processes they start: whatever else they create (object
  fan-out directories, temporary files, unpacked bundles, files a later change adds) is
  private without its module having to remember. Modes given explicitly (a bundle's 0644
  files, inside a 0700 directory) still apply.
* SQLite creates the database's ``-wal`` and ``-shm`` files with the database file's own mode,
  so creating the database 0600 first makes all three private whatever the umask (it does not
  depend on the process's umask, which an embedding program may not have set).
* What is flwrmtls's own by name (the database and its ``-wal``/``-shm``, ``<database>.objects``,
  ``<state-dir>/objects``) and is found open to group or others is tightened (:func:`tighten`),
  with one warning line naming it and its old mode: these are never meant to be shared.
* A directory the operator may have made or chosen is never changed. ``$FLWRMTLS_HOME`` found
  open to group or others gets one warning line saying what to run
  (:func:`open_directory_warning`), and so does a node's ``--state-dir`` found open; a
  ``--database`` directory that already exists is the operator's business (the files flwrmtls
  keeps in it are private themselves).

Each function returns its warning line (or None) for the caller to log or print.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIRECTORY",
    "PRIVATE_FILE",
    "PRIVATE_UMASK",
    "open_directory_warning",
    "private_directory",
    "private_file",
    "restrict_umask",
    "tighten",
]

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
PRIVATE_UMASK = 0o077

_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def restrict_umask() -> None:
    """Make everything this process (and its children) creates private by default."""
    os.umask(PRIVATE_UMASK)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) as a 0700 directory; an existing one is left as
    it is (see :func:`open_directory_warning` and :func:`tighten`)."""
    try:
        path.mkdir(mode=PRIVATE_DIRECTORY, parents=True)
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_DIRECTORY)  # mkdir's mode was filtered by the umask


def open_directory_warning(path: Path) -> str | None:
    """A warning line if the directory ``path`` is open to group or others (it is not changed:
    the operator may have made it so)."""
    mode = _mode(path)
    if not mode & _OPEN_TO_OTHERS:
        return None
    return (
        f"{path} is open to group or others (mode {mode:04o}) and holds flwrmtls state: "
        f"run chmod 700 {path}"
    )


def private_file(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if it does not exist; an existing one is left as
    it is (:func:`tighten` it once it is known to be flwrmtls's own)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_FILE)  # the mode was filtered by the umask


def tighten(path: Path) -> str | None:
    """Take group and other access off an existing ``path`` of flwrmtls's own; return a
    warning naming its old mode when there was any (None when it is missing or private)."""
    try:
        mode = _mode(path)
    except FileNotFoundError:
        return None
    if not mode & _OPEN_TO_OTHERS:
        return None
    os.chmod(path, mode & ~_OPEN_TO_OTHERS)
    return f"{path} was open to group or others (mode {mode:04o}); set to {mode & 0o700:04o}"
