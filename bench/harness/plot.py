"""The side-by-side figure as a picture (matplotlib, a bench-only dependency), from saved JSON.

Rules: drawn only from a result bench_compare.py saved, never from figures typed in; one panel
per figure (wall time, time per round, the link's and a node's peak RSS), one group of bars per
cell, one bar per system, the median with its min-max as an error bar; a missing figure is a
gap, never a zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PANELS", "plot_compare"]

PANELS = (
    ("wall_seconds", "wall time of a run (s)", True),
    ("round_mean_seconds", "time per round (s)", True),
    ("link_peak_rss_mib", "peak RSS, link/server tree (MiB)", False),
    ("node_peak_rss_mib", "peak RSS, one node's tree (MiB)", False),
)


def plot_compare(result: dict[str, Any], names: dict[str, str], path: Path) -> None:
    """Write ``path`` (PNG): the cells of ``result`` side by side, systems in its order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems: list[str] = result["config"]["systems"]
    cells = result["cells"]
    labels = [f"{c['nodes']} x {c['model_mb']:g} MiB" for c in cells]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    width = 0.8 / max(1, len(systems))
    for axis, (metric, title, log) in zip(axes.flat, PANELS, strict=True):
        for offset, system in enumerate(systems):
            xs, medians, low, high = [], [], [], []
            for index, cell in enumerate(cells):
                summary = cell["systems"].get(system, {}).get("summary")
                if summary is None:
                    continue
                values = summary[metric]
                xs.append(index + (offset - (len(systems) - 1) / 2) * width)
                medians.append(values["median"])
                low.append(values["median"] - values["min"])
                high.append(values["max"] - values["median"])
            axis.bar(xs, medians, width, yerr=[low, high], label=names.get(system, system))
        axis.set_title(title)
        axis.set_xticks(range(len(cells)), labels)
        if log:
            axis.set_yscale("log")
        axis.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(
        f"FedAvg, {result['config']['rounds']} rounds, distinct updates; "
        f"{result['date']}, {result['revision']}, load {result.get('loadavg_start', 0):.1f}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
