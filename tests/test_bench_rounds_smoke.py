"""The rounds benchmark keeps working: one tiny cell end to end, distinct replies by default
and the identical-replies variant as its own, named rows, and the "node killed mid-round" case
(figures shown, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_rounds.py"


def test_rounds_benchmark_runs_one_tiny_cell_both_ways() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--repetitions", "1",
         "--nodes", "2", "--model-mb", "1", "--identical-updates"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    distinct, identical = figures["cells"]
    assert (distinct["nodes"], distinct["model_mb"], distinct["distinct"]) == (2, 1, True)
    assert identical["distinct"] is False
    for cell, shift in ((distinct, 3 * (1 + 1.5 / 1024)), (identical, 3.0)):
        [run] = cell["runs"]
        assert run["wall_seconds"] > 0
        assert len(run["round_seconds"]) == 3
        assert len(run["detail"]["phases"]) == 3
        assert set(run["detail"]["cpu_seconds"]) == {
            "cli", "link", "serverapp", "nodes", "clientapps"
        }  # fmt: skip
        assert run["link_peak_rss_mib"] > 0
        assert run["node_peak_rss_mib"] > 0
        assert abs(run["model_shift"] - shift) < 1e-3
    killed = figures["node_killed"]
    assert (killed["nodes"], killed["model_mb"]) == (3, 1)
    [stall] = killed["stall_seconds"]
    assert stall > 0
    assert "went offline (its connection closed at " in killed["reason"]
