"""Process trees: their memory (peak RSS, sampled), their CPU time, and ending them by tag.

Rules: a tree is a process and every descendant it has (app processes come and go; the
sampler looks for new ones every :data:`TREE_REFRESH` seconds, a sample counts those alive;
a process id reused within that time would be counted for the one that ended).
RSS is VmRSS (``/proc/PID/statm``'s resident pages, psutil's ``rss``), summed over the tree;
a process that is gone, or a zombie, counts 0. The sampler reads each tree member's
``statm`` per sample and scans ``/proc`` only to find the trees' members: walking every
process of the machine each 50 ms (psutil's ``children(recursive=True)`` per root) cost the
benchmark process 8.6-10.4% of a core, taken from the federation it measures (2% now).
Only processes that carry this benchmark's tag in their environment are ever signalled by
:func:`sweep`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL = 0.05
"""Seconds between RSS samples."""
TREE_REFRESH = 0.25
"""Seconds between two scans of ``/proc`` for the sampled trees' members (made at a
sample): a process is counted from at most this long and a sample interval after it starts
(an app process's first quarter second is its interpreter starting, far below its peak)."""
TAG_VARIABLE = "FLWRMTLS_BENCH_TAG"
"""The environment variable that marks the processes a benchmark started (for :func:`sweep`)."""

MIB = 1 << 20


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...)."""
    process = _process(pid)
    if process is None:
        return []
    try:
        return [child.pid for child in process.children(recursive=True)]
    except psutil.Error:
        return []


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    process = _process(pid)
    if process is None:
        return []
    try:
        return [child.pid for child in process.children()]
    except psutil.Error:
        return []


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    """The resident set of ``pid`` in bytes (VmRSS, from ``/proc/PID/statm``); 0 when it is
    gone or a zombie (whose statm reads as all zeros)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm(pid: int) -> int:
    """VmHWM (the process's peak RSS so far, kept by the kernel) in bytes; 0 when gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _children_map() -> dict[int, list[int]]:
    """Every live process's direct children, from one pass over ``/proc``."""
    children_of: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue  # gone since the listing
        fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != b"Z":
            children_of.setdefault(int(fields[1]), []).append(int(name))
    return children_of


def _below(pid: int, children_of: Mapping[int, list[int]]) -> list[int]:
    found: list[int] = []
    todo = list(children_of.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children_of.get(child, ()))
    return found


def tree_rss_bytes(pid: int) -> int:
    """``pid`` and all its descendants, in bytes."""
    return rss_bytes(pid) + sum(rss_bytes(child) for child in descendants(pid))


def mib(nbytes: float) -> float:
    return nbytes / MIB


@dataclass
class Peak:
    """Peak RSS in bytes of one root process alone, of its tree, and of its descendants."""

    own: int = 0
    tree: int = 0
    descendants: int = 0
    largest_descendant: int = 0
    """The largest peak of any one descendant, from its kernel-kept high-water mark (VmHWM)
    read at each sample: a peak shorter than the sampling interval counts too (a sampled
    tree can miss it: an app process's peak may last less than 50 ms), but not one of a
    process found by no scan of ``/proc`` (alive less than :data:`TREE_REFRESH`) or that
    ends within a sample's interval of its peak."""


@dataclass
class Peaks:
    """Peaks per named root, and per group of roots (the largest member of each group)."""

    roots: dict[str, Peak] = field(default_factory=dict)
    groups: dict[str, Peak] = field(default_factory=dict)
    samples: int = 0
    trace: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, the first root's own RSS), about one a second."""


class RssSampler:
    """Peak RSS of named roots (and groups of roots), each alone and with its descendants,
    sampled every ``interval`` seconds by a thread; a context manager."""

    def __init__(
        self,
        roots: Mapping[str, int],
        groups: Mapping[str, Sequence[int]] | None = None,
        interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self._roots = dict(roots)
        self._groups = {name: list(pids) for name, pids in (groups or {}).items()}
        self._interval = interval
        self.peaks = Peaks(
            roots={name: Peak() for name in self._roots},
            groups={name: Peak() for name in self._groups},
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()
        self._last_trace = -1.0
        self._members: dict[int, list[int]] = {}
        """Each sampled root's descendants, as the last scan of /proc found them."""
        self._scanned = float("-inf")

    def _measure(self, pid: int, peak: Peak) -> int:
        own = rss_bytes(pid)
        members = self._members.get(pid, ())
        below = sum(rss_bytes(child) for child in members)
        peak.largest_descendant = max(
            [peak.largest_descendant, *(_hwm(child) for child in members)]
        )
        peak.own = max(peak.own, own)
        peak.descendants = max(peak.descendants, below)
        peak.tree = max(peak.tree, own + below)
        return own

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._scanned >= TREE_REFRESH:
            children_of = _children_map()
            roots = [*self._roots.values(), *(p for ps in self._groups.values() for p in ps)]
            self._members = {root: _below(root, children_of) for root in roots}
            self._scanned = now
        first = None
        for name, pid in self._roots.items():
            own = self._measure(pid, self.peaks.roots[name])
            first = own if first is None else first
        for name, pids in self._groups.items():
            for pid in pids:
                self._measure(pid, self.peaks.groups[name])
        self.peaks.samples += 1
        elapsed = time.monotonic() - self._started
        if first is not None and elapsed - self._last_trace >= 1.0:
            self.peaks.trace.append((round(elapsed, 1), first))
            self._last_trace = elapsed

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()

    def tree_mib(self, name: str) -> float:
        return mib(self.peaks.roots[name].tree)

    def own_mib(self, name: str) -> float:
        return mib(self.peaks.roots[name].own)

    def largest_descendant_mib(self, name: str) -> float:
        return mib(self.peaks.roots[name].largest_descendant)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid``, user + system; (0, 0) once it is gone."""
    process = _process(pid)
    if process is None:
        return 0.0, 0.0
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return times.user + times.system, times.children_user + times.children_system


def thread_cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid`` in nanoseconds (Linux schedstat), or None.

    Finer than :func:`cpu_seconds` (clock ticks): what the authenticator benchmarks need."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{task.path}/schedstat", encoding="ascii") as stat:
                    total += int(stat.read().split()[0])
            except FileNotFoundError:  # the thread just exited
                continue
    except (OSError, ValueError, IndexError):
        return None
    return total


def tagged_pids(tag: str) -> list[int]:
    """Live processes (not zombies) whose environment carries ``TAG_VARIABLE=tag``."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(TAG_VARIABLE) == tag and (
                process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def sweep(tag: str, grace: float = 5.0) -> int:
    """SIGTERM, then after ``grace`` seconds SIGKILL, whatever this benchmark started and is
    still running (some systems start processes in sessions of their own that outlive their
    parent for a while). Returns how many processes were signalled."""
    signalled = 0
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        pids = tagged_pids(tag)
        if not pids:
            return signalled
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
                signalled += 1
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and tagged_pids(tag):
            time.sleep(0.1)
    return signalled


def wait_gone(pids: Sequence[int], parents: Sequence[int], timeout: float) -> bool:
    """Wait until none of ``pids`` is still a child of any of ``parents`` (exited and reaped);
    False when ``timeout`` passed first."""
    watched = set(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not watched & {child for parent in parents for child in children(parent)}:
            return True
        time.sleep(0.1)
    return False
