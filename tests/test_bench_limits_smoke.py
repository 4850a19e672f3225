"""bench_limits keeps working: each section's quick pieces, small (figures never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_limits.py"


def run_bench(*args: str, timeout: float = 120) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def test_auth_section_reports_latency_and_throughput_for_each_authenticator() -> None:
    figures = run_bench("--only", "auth", "--auth-calls", "40", "--channels", "2", "--depth", "2")
    assert figures["sections"] == ["auth"]
    auth = figures["auth"]
    links = {"mtls", "ec-key", "tls-only"}
    assert {row["link"] for row in auth["latency"]} == links
    assert {row["link"] for row in auth["throughput"]} == links
    for row in auth["throughput"]:
        assert row["summary"]["count"] == 80
        assert (row["channels"], row["depth"]) == (2, 2)
    assert auth["ratios"]["throughput_mtls_over_none"] > 0
    assert auth["ratios"]["latency_p50_mtls_over_none"] > 0
    assert set(auth["mtls_over_none"]) >= {"latency_p50", "throughput"}
