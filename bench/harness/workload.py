"""The workload every system runs, what one run of it measures, and the check of its result.

The workload (bench/apps/*_fedavg): the server makes M MiB of random float32 in 4 arrays and
runs its system's own FedAvg over all N nodes for R rounds (default 3), no evaluation; node K
adds ``1 + K/1024`` to every element and replies, so each node's reply differs from every
other node's (``distinct``). The identical-replies variant (every node adds 1) exists only
as an extra, named figure: no headline figure depends on deduplicating replies.

Rules: a run's figures come with the check that its model is right (:func:`check_model`);
a run whose model is wrong raises :class:`BenchError`. Round times tile the strategy's run:
round 1 starts when the strategy starts (the model made), each round ends where the next
begins, the last where the strategy ends.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import BenchError
from harness.stats import Spread, spread

__all__ = [
    "ARRAYS",
    "DEFAULT_ROUNDS",
    "Run",
    "check_model",
    "expected_shift",
    "step",
    "summarize_runs",
    "tile",
]

DEFAULT_ROUNDS = 3
ARRAYS = 4
TOLERANCE = 1e-3
"""Float32 FedAvg of values near 1-4: the final model is within this of the exact figure."""


def step(index: int, *, distinct: bool) -> float:
    """What node ``index`` (1-based) adds to every element."""
    return 1.0 + index / 1024 if distinct else 1.0


def expected_shift(nodes: int, rounds: int, *, distinct: bool) -> float:
    """How far every element moves over ``rounds`` of FedAvg with equal weights."""
    return rounds * statistics.fmean(step(k, distinct=distinct) for k in range(1, nodes + 1))


def check_model(
    probe: Mapping[str, Sequence[float]], nodes: int, rounds: int, *, distinct: bool
) -> float:
    """The shift the server saw (first and last element of its first array, before and after);
    raises :class:`BenchError` unless both moved by :func:`expected_shift`."""
    shift = expected_shift(nodes, rounds, distinct=distinct)
    try:
        moved = [
            after - before for before, after in zip(probe["initial"], probe["final"], strict=True)
        ]
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"the server reported no model probe: {probe}") from None
    if not moved or any(abs(m - shift) > TOLERANCE for m in moved):
        raise BenchError(
            f"wrong model after {rounds} rounds with {nodes} nodes: elements moved by {moved}, "
            f"expected {shift:.6f} ({'distinct' if distinct else 'identical'} updates)"
        )
    return statistics.fmean(moved)


def tile(bounds: Sequence[float]) -> list[float]:
    """Round durations from ``[start of round 1, start of round 2, ..., end of the last]``."""
    return [after - before for before, after in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class Run:
    """One timed run of the workload on one system."""

    wall_seconds: float
    """The system's run command (or, for FLARE, job submission) to its end."""
    round_seconds: list[float]
    start_seconds: float
    """The command's start -> round 1 starts (the server has made the model)."""
    end_seconds: float
    """The last round's end -> the command's end."""
    link_peak_rss_mib: float
    """The link (server) process with all its descendants."""
    link_own_peak_rss_mib: float
    node_peak_rss_mib: float
    """Node 1 (client 1) with all its descendants."""
    node_own_peak_rss_mib: float
    rss_samples: int
    idle_after_seconds: float
    """The command's end -> the run's app (job) processes have exited."""
    model_shift: float
    """How far the model moved (checked against the updates' arithmetic)."""
    detail: dict[str, Any] = field(default_factory=dict)
    """What only one system measures (flwrmtls: phases and CPU; FLARE: the job id)."""


def summarize_runs(runs: Sequence[Run]) -> dict[str, Spread]:
    """Median (min-max) over the runs of each figure."""
    later = [s for r in runs for s in (r.round_seconds[1:] or r.round_seconds[:1])]
    return {
        "wall_seconds": spread([r.wall_seconds for r in runs]),
        "start_seconds": spread([r.start_seconds for r in runs]),
        "end_seconds": spread([r.end_seconds for r in runs]),
        "round_mean_seconds": spread([statistics.fmean(r.round_seconds) for r in runs]),
        "round_1_seconds": spread([r.round_seconds[0] for r in runs]),
        "later_round_seconds": spread(later),
        "link_peak_rss_mib": spread([r.link_peak_rss_mib for r in runs]),
        "link_own_peak_rss_mib": spread([r.link_own_peak_rss_mib for r in runs]),
        "node_peak_rss_mib": spread([r.node_peak_rss_mib for r in runs]),
        "node_own_peak_rss_mib": spread([r.node_own_peak_rss_mib for r in runs]),
        "idle_after_seconds": spread([r.idle_after_seconds for r in runs]),
    }


def runs_json(runs: Sequence[Run]) -> dict[str, Any]:
    """Every run and their summary, as JSON."""
    return {"runs": [asdict(r) for r in runs], "summary": summarize_runs(runs)}
