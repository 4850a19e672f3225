"""How flwrmtls's processes use the C heap: two malloc arenas, not one per thread, and what
a transfer freed given back.

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
* glibc also keeps what a transfer freed: once a large block has been freed it serves blocks
  of that size from its heap, and gives heap pages back only from the heap's top. A node
  that had fetched a 50 MiB message and sent its reply kept 20-35 MiB it no longer used
  until the next message. :func:`release_free_memory`
  (``malloc_trim(0)``: free pages anywhere in the heap) is called where a process's bulk
  work ends: a node once a reply's arrays are sent and, sharing its object directory with
  its ClientApp (the default), once a message's arrays are in its store; a
  ClientApp once its reply is stored; the link after object transfers end, at most once a
  second (its :class:`~flwrmtls.objects.serving.TransferGate`). It holds each arena's lock
  while it gives pages back, so other threads that allocate wait: about 7 ms for 64 MiB
  free, 20-90 microseconds with nothing free (measured here); not for hot paths, and in a
  worker thread where an event loop would wait, except the link's gate, which calls it on
  its event loop at most once a second (a worker thread would not spare the loop: its own
  allocations wait for the same locks). Measured with ``bench_rounds.py --nodes 2 8
  --model-mb 50`` (medians of 3; docs/performance.md): a node's tree 253 / 253 MiB before,
  213 / 223 after.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ARENAS", "limit_malloc_arenas", "release_free_memory"]

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def _c_function(name: str, *argtypes: Any) -> Any:
    """The loaded C library's function ``name`` (an int result), or None: a C library
    without it is not glibc. Looked up in the process's own symbols (``dlopen(NULL)``), not
    by searching for the library (which runs ``ldconfig`` on Linux)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_MALLOPT = _c_function("mallopt", ctypes.c_int, ctypes.c_int)
_MALLOC_TRIM = _c_function("malloc_trim", ctypes.c_size_t)


def limit_malloc_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """Limit glibc's malloc to :data:`ARENAS` arenas; returns whether it was done here."""
    if "MALLOC_ARENA_MAX" in (os.environ if environ is None else environ):
        return False
    return _MALLOPT is not None and bool(_MALLOPT(_M_ARENA_MAX, ARENAS))


def release_free_memory() -> bool:
    """Give the system back the heap's free pages, wherever they are (glibc's
    ``malloc_trim(0)``); returns whether any were given back (False without glibc)."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))
