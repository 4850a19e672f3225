"""Summaries of repeated measurements: median and range, percentiles, ratios of medians.

Rules: pure functions over numbers; a ratio is taken only between figures of the same run of
a benchmark (never across runs or days), and only when the denominator is positive.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["Spread", "percentiles", "ratio", "spread"]

Spread = dict[str, float]
"""``{"median": ..., "min": ..., "max": ...}``."""


def spread(values: Sequence[float]) -> Spread:
    """Median, minimum and maximum of ``values`` (at least one)."""
    if not values:
        raise ValueError("no values to summarize")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(numerator: Spread | None, denominator: Spread | None) -> float | None:
    """Median over median, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator["median"] <= 0:
        return None
    return numerator["median"] / denominator["median"]


def percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """Count, p50, p99 and max (nearest rank) of ``values``, multiplied by ``scale`` (seconds
    to milliseconds by default)."""
    if not values:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        index = max(1, round(fraction * len(ordered) + 0.4999))
        return ordered[min(index, len(ordered)) - 1] * scale

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "max_ms": ordered[-1] * scale,
    }
