"""Files watched by content: the one way the link and the node notice a file replaced under them.

Rules:

* A file is compared by the SHA-256 of its bytes, read again at each poll: a rewrite, a
  replacement (a rename over it) and Kubernetes' atomic ``..data`` symlink swap of a mounted
  secret are all noticed, whatever their modification times say.
* A file that cannot be read counts as its error ("unreadable: ..."), so a file that goes
  away, and one that comes back, are changes too; what to make of them (keep the last good
  material) is the caller's.
* Polling is the caller's: :meth:`FileWatch.changed` reads the files once and answers; it
  never sleeps and holds no thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FileWatch", "content_digest"]


def content_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes, or ``unreadable: REASON``."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        return f"unreadable: {error.strerror}"


class FileWatch:
    """The content of some files as last seen; :meth:`changed` says whether it moved since."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = tuple(paths)
        self._seen = self._read()

    def _read(self) -> tuple[str, ...]:
        return tuple(content_digest(path) for path in self.paths)

    def changed(self) -> bool:
        """Read the files; True (once) when any content differs from the last look."""
        seen = self._read()
        if seen == self._seen:
            return False
        self._seen = seen
        return True
