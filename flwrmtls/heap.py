"""How flwrmtls's processes use the C heap: two malloc arenas, not one per thread.

Rules:

* glibc gives each thread that allocates while another does an arena of its own (up to 8 per
  core) and keeps what is freed in each for later. The link and the nodes move objects in
  1 MiB chunks on several threads at once (grpc's, the transfer workers), so every arena
  ends up holding chunks. Measured at 8 nodes x 50 MiB (docs/performance.md): the link's own
  peak RSS 242-312 MiB and a node's 135 MiB with glibc's default, 199 and 103 MiB with two
  arenas, at the same CPU time.
* :func:`limit_malloc_arenas` asks for two (``mallopt(M_ARENA_MAX, 2)``), first thing in the
  link, the nodes and the app processes they start (in an app process numpy's import may
  have started threads already; arenas are limited from then on). A ``MALLOC_ARENA_MAX``
  set in the environment wins (glibc reads it itself); with any other C library it does
  nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

__all__ = ["ARENAS", "limit_malloc_arenas"]

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Limit glibc's malloc to :data:`ARENAS` arenas; returns whether it was done here."""
    if "MALLOC_ARENA_MAX" in (os.environ if environ is None else environ):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to limit
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENAS))
