"""The side-by-side benchmark's flwrmtls half keeps working: one tiny cell in both modes.

Flower is left out (it needs its own virtualenv from the package index); figures are shown,
never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_compare.py"


def test_compare_benchmark_runs_flwrmtls_in_both_modes() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--systems", "mtls", "eckey"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["config"]["systems"] == ["mtls", "eckey"]
    [cell] = figures["cells"]
    assert (cell["nodes"], cell["model_mb"]) == (2, 1)
    assert set(cell["systems"]) == {"mtls", "eckey"}
    assert cell["ratios"] == {}  # no Flower, no ratio
    for system in ("mtls", "eckey"):
        [repetition] = cell["systems"][system]["repetitions"]
        assert repetition["wall_seconds"] > 0
        assert len(repetition["round_seconds"]) == 3
        assert all(seconds > 0 for seconds in repetition["round_seconds"])
        assert repetition["link_peak_rss_mib"] > 0
        assert repetition["node_peak_rss_mib"] > 0
