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


def test_large_section_moves_the_model_both_ways_and_reports_rates_and_memory() -> None:
    figures = run_bench("--only", "large", "--model-mb", "4", "--large-nodes", "2")
    large = figures["large"]
    assert large["model_bytes"] == 4_000_000
    assert [cell["nodes"] for cell in large["cells"]] == [2]
    for cell in large["cells"]:
        # the ServerApp checked every reply's arrays (model + node index), all bytes
        assert cell["reply_bytes"] == cell["nodes"] * large["model_bytes"]
        for key in ("broadcast_mb_s", "return_mb_s", "round_trip_mb_s", "broadcast_over_raw"):
            assert cell[key] > 0
        assert cell["raw"]["streams"] == cell["nodes"]
        assert cell["raw"]["download_mb_s"] > 0
        assert cell["raw"]["upload_mb_s"] > 0
        assert cell["link_peak_rss_mib"] >= cell["link_idle_rss_mib"] > 0
        assert cell["serverapp_peak_rss_mib"] > 0
        assert cell["clientapp_peak_rss_mib"] > 0


def test_scale_section_connects_every_node_on_its_own_connection_and_runs_a_round() -> None:
    figures = run_bench(
        "--only", "scale", "--nodes", "12", "--workers", "2", "--heartbeat-interval", "1",
        "--idle-seconds", "2",
    )  # fmt: skip
    scale = figures["scale"]
    assert scale["activated"] == 12
    assert scale["fleet_connections"] == 12  # one TCP + TLS connection per simulated node
    assert scale["round"]["messages"] == 12
    assert scale["round"]["answered"] == 12
    assert scale["round"]["error_replies"] == {}
    assert scale["errors"] == {}
    assert scale["heartbeat_idle"]["count"] > 0
    assert scale["probe_idle"]["count"] > 0
    assert scale["heartbeat_idle"]["p99_ms"] >= scale["heartbeat_idle"]["p50_ms"] > 0
    assert scale["link_rss_mib"]["peak"] > 0
