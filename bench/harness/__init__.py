"""The benchmarks' shared harness: federations, sampling, timing, tables, results.

Rules every benchmark keeps through it:

* Real processes only, on 127.0.0.1, ports from the OS (or free a moment ago, where a system
  wants a fixed ``--port``); every file under one temporary directory (:func:`cli.workdir`),
  removed at the end unless ``--keep``.
* The same workload for every system (:mod:`harness.workload`): M MiB of float32 in 4 arrays,
  FedAvg over all N nodes, no evaluation, one elementwise step per node; each node's reply
  differs from every other node's unless a figure is named as the identical-replies variant.
* Each ServerApp checks the model it ends with against the arithmetic of the updates it was
  sent; a run whose model is wrong is an error, not a figure.
* Timing uses ``time.monotonic()`` (one clock for every process on the machine); RSS is the
  peak of a process tree (the process and all its descendants), sampled every 50 ms, beside
  the exact peak of its largest descendant (:mod:`harness.procs`).
* Nothing here asserts on a timing: the benchmarks print figures; ratios are computed within
  one run only.
* A benchmark stops what it started: processes are ended by their own handles, or by the
  benchmark's tag in their environment (:func:`procs.sweep`), never by name.
"""

from __future__ import annotations

import sys

__all__ = ["BenchError", "progress"]


class BenchError(Exception):
    """The benchmark could not measure: a process failed, a run did not complete, or a run's
    result was wrong. One line says which; the rest is the logs' tails."""


def progress(text: str) -> None:
    """A progress line on stderr (stdout holds only the tables or the JSON)."""
    print(text, file=sys.stderr, flush=True)
