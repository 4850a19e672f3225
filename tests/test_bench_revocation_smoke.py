"""The revocation benchmark keeps working (figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_revocation.py"


def test_revocation_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures["summary"]) == {"crl", "unregister"}
    assert all(row["trials"] == 1 for row in figures["summary"].values())
    assert all(row["all_exited_non_zero_with_reason"] for row in figures["summary"].values())
