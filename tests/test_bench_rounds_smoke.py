"""The rounds benchmark keeps working: one tiny cell end to end (figures shown, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_rounds.py"


def test_rounds_benchmark_runs_one_tiny_cell() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--repetitions", "1",
         "--nodes", "2", "--model-mb", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    [cell] = figures["cells"]
    assert (cell["nodes"], cell["model_mb"]) == (2, 1)
    [repetition] = cell["repetitions"]
    assert repetition["wall_seconds"] > 0
    assert len(repetition["round_seconds"]) == 3
    assert len(repetition["rounds"]) == 3
    assert repetition["link_peak_rss_mib"] > 0
    assert repetition["node_peak_rss_mib"] > 0
