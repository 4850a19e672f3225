"""The side-by-side benchmark's flwrmtls half keeps working: one tiny cell, every flwrmtls
column (mTLS, EC-key, and the identical-replies extra column), through the real harness.

Flower and NVIDIA FLARE are left out (each needs its own virtualenv from the package index;
``make bench`` makes them); figures are shown, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_compare.py"


def test_compare_benchmark_runs_each_flwrmtls_column_with_a_checked_model(tmp_path: Path) -> None:
    saved = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--save", str(saved),
         "--systems", "mtls", "eckey", "mtls-identical"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert json.loads(saved.read_text()) == figures
    assert figures["config"]["systems"] == ["mtls", "eckey", "mtls-identical"]
    [cell] = figures["cells"]
    assert (cell["nodes"], cell["model_mb"]) == (2, 1)
    assert cell["ratios"] == {}  # no other system, no ratio
    shifts = {}
    for system in ("mtls", "eckey", "mtls-identical"):
        [run] = cell["systems"][system]["runs"]
        assert run["wall_seconds"] > 0
        assert len(run["round_seconds"]) == 3
        assert run["link_peak_rss_mib"] >= run["link_own_peak_rss_mib"] > 0
        assert run["node_peak_rss_mib"] >= run["node_own_peak_rss_mib"] > 0
        shifts[system] = run["model_shift"]
    # Distinct replies: nodes 1 and 2 add 1 + 1/1024 and 1 + 2/1024, averaged over 3 rounds;
    # identical replies: both add 1. The harness checked the ServerApp's model against this.
    assert abs(shifts["mtls"] - 3 * (1 + 1.5 / 1024)) < 1e-3
    assert abs(shifts["eckey"] - 3 * (1 + 1.5 / 1024)) < 1e-3
    assert abs(shifts["mtls-identical"] - 3.0) < 1e-3
    # The table is rendered again from the saved JSON alone.
    again = subprocess.run(
        [sys.executable, str(BENCH), "--from-json", str(saved)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "flwrmtls mTLS, identical replies" in again.stdout
