"""The several-links benchmark keeps working: its calls section on SQLite and PostgreSQL, and
one tiny rounds cell on two replicas behind haproxy (figures shown, never asserted); the
verdict on the issue's goal (two replicas hold 1.8x the nodes at the same p99) from its cells.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_several_links.py"


def test_several_links_benchmark_runs_its_small_sections() -> None:
    """The rounds cell on two replicas only: SQLite's and one PostgreSQL link's paths are the
    calls section's, and each federation started costs the suite seconds."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--only", "calls", "rounds",
         "--calls", "20", "--nodes", "2", "--model-mb", "1", "--rounds", "1",
         "--setups", "2 replicas"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert [c["setup"] for c in figures["calls"]] == ["sqlite", "postgresql"]
    for calls in figures["calls"]:
        assert calls["heartbeat"]["count"] == 20
        assert calls["empty_pull"]["count"] == 20
    assert [c["setup"] for c in figures["rounds"]] == ["2 replicas"]
    [cell] = figures["rounds"]
    [run] = cell["runs"]
    assert len(run["round_seconds"]) == 1


def _bench() -> ModuleType:
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_several_links", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(setup: str, nodes: int, p99: float) -> dict[str, Any]:
    return {"setup": setup, "nodes": nodes, "heartbeats": {"p99_ms": p99}}


def test_the_goal_is_met_only_when_two_replicas_answer_1_8x_the_nodes_as_fast() -> None:
    bench = _bench()
    assert bench.heartbeat_cells(1000) == [
        ("postgresql", 556), ("postgresql", 1000), ("2 replicas", 1000),
    ]  # fmt: skip
    one, more = _cell("postgresql", 556, 20.0), _cell("postgresql", 1000, 40.0)
    line = bench.goal_line([one, more, _cell("2 replicas", 1000, 30.0)])
    assert "NOT met" in line  # slower than one link with 556 nodes
    assert bench.goal_line([one, more, _cell("2 replicas", 1000, 19.0)]).endswith(": met")
    # Two replicas with fewer than 1.8x the nodes prove nothing either way.
    assert bench.goal_line([one, _cell("2 replicas", 900, 1.0)]) is None
