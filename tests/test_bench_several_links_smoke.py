"""The several-links benchmark keeps working: its calls section on SQLite and PostgreSQL, and
one tiny rounds cell on two replicas behind haproxy (figures shown, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_several_links.py"


def test_several_links_benchmark_runs_its_small_sections() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--only", "calls", "rounds",
         "--calls", "20", "--nodes", "2", "--model-mb", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert [c["setup"] for c in figures["calls"]] == ["sqlite", "postgresql"]
    for calls in figures["calls"]:
        assert calls["heartbeat"]["count"] == 20
        assert calls["empty_pull"]["count"] == 20
    assert [c["setup"] for c in figures["rounds"]] == ["sqlite", "postgresql", "2 replicas"]
    for cell in figures["rounds"]:
        [run] = cell["runs"]
        assert len(run["round_seconds"]) == 1
