"""The link and the nodes keep two malloc arenas however many threads allocate
(flwrmtls.heap): 8 threads allocating 70 KB buffers, as transfer workers do, make glibc open an
arena for almost every thread unless limited; an explicit MALLOC_ARENA_MAX wins. What a
transfer freed is given back: 64 MiB of 1 MiB chunks freed between blocks still in use stay
in the process's memory unless :func:`release_free_memory` gives their pages back."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from flwrmtls import heap
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


_CHUNKS = """
import sys
from flwrmtls.heap import release_free_memory
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
block = bytearray(2 << 20)
del block  # glibc now serves 1 MiB blocks from its heap, as after a node's first transfer
chunks, kept = [], []
for _ in range(64):  # chunks as a transfer receives them, between blocks that stay
    chunks.append(bytearray(1 << 20))
    kept.append(bytes(1000))
before = anon_kib()
del chunks
released = release_free_memory() if sys.argv[1] == "release" else None
print(before - anon_kib(), released)
"""


def freed_kib(mode: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-c", _CHUNKS, mode], capture_output=True, text=True, check=True,
        timeout=60,
    )  # fmt: skip
    given_back, released = result.stdout.split()
    return int(given_back), released


def test_what_a_transfer_freed_is_given_back() -> None:
    given_back, released = freed_kib("release")
    assert released == "True"
    assert given_back > 56 * 1024  # nearly all of the 64 MiB
    kept, _ = freed_kib("keep")
    assert kept < 8 * 1024  # control: glibc keeps the freed chunks by itself


def test_without_glibc_nothing_is_limited_or_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C library without ``mallopt`` or ``malloc_trim`` (musl): both calls say so and do
    nothing, instead of failing the process that makes them."""
    monkeypatch.setattr(heap, "_MALLOPT", None)
    monkeypatch.setattr(heap, "_MALLOC_TRIM", None)
    assert heap.limit_malloc_arenas({}) is False
    assert heap.release_free_memory() is False
