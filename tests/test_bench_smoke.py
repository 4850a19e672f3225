"""The auth benchmark keeps working (figures are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_auth.py"


def test_auth_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--handshakes", "5", "--calls", "50", "--channels", "2",
         "--depth", "2", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {link["link"] for link in figures["handshakes"]} == {"mtls", "tls-only"}
    assert {link["link"] for link in figures["throughput"]} == {"mtls", "ec-key", "tls-only"}
    assert figures["heartbeat_ratio"]["p50"] > 0
    assert figures["handshakes"][0]["summary"]["count"] == 5
