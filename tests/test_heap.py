"""The link and the nodes keep two malloc arenas however many threads allocate
(flwrmtls.heap): 8 threads allocating 70 KB buffers, as transfer workers do, make glibc open an
arena for almost every thread unless limited; an explicit MALLOC_ARENA_MAX wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from flwrmtls.heap import ARENAS, limit_malloc_arenas

_PROGRAM = """
import ctypes, sys, threading
if sys.argv[1] == "limit":
    from flwrmtls.heap import limit_malloc_arenas
    limit_malloc_arenas()
def work():
    for _ in range(200):
        chunks = [bytes(70_000) for _ in range(10)]
        del chunks
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True,
        env={**environ, **env}, timeout=60,
    )  # fmt: skip
    return len(re.findall(r"^Arena \d+:", result.stderr, re.MULTILINE))


def test_threads_allocating_at_once_share_two_arenas() -> None:
    assert arenas("limit") == ARENAS
    assert arenas("none") > ARENAS  # control: glibc's default opens one for most threads


def test_an_explicit_malloc_arena_max_wins() -> None:
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is False
    assert arenas("limit", MALLOC_ARENA_MAX="4") > ARENAS
