"""The benchmark harness: the workload's arithmetic and its check, round tiling, ratios,
tables (pure), and the RSS sampler against real processes. The check is what keeps a figure
honest: a run whose server did not end with the model the distinct updates make (for
instance because every node sent the same reply) is refused, beside the run that did, which
passes."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flwrmtls.objects.store import CHUNK_SIZE
from flwrmtls.testing.pki import make_test_pki

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from harness import BenchError
from harness.procs import TREE_REFRESH, RssSampler, rss_bytes
from harness.rawtls import measure_tls, tls_context
from harness.stats import percentiles, ratio, spread
from harness.tables import fmt_spread, markdown_table
from harness.workload import check_model, expected_shift, step, tile


def test_each_node_adds_its_own_step_unless_identical() -> None:
    assert [step(k, distinct=True) for k in (1, 2, 8)] == [1 + 1 / 1024, 1 + 2 / 1024, 1 + 8 / 1024]
    assert {step(k, distinct=False) for k in (1, 2, 8)} == {1.0}
    assert expected_shift(2, 3, distinct=True) == pytest.approx(3 * (1 + 1.5 / 1024))
    assert expected_shift(8, 3, distinct=False) == 3.0


def test_a_model_from_identical_replies_is_refused_where_distinct_ones_were_asked_for() -> None:
    initial = [0.25, 0.75]
    identical = {"initial": initial, "final": [x + 3.0 for x in initial]}
    with pytest.raises(BenchError, match="wrong model after 3 rounds with 8 nodes"):
        check_model(identical, 8, 3, distinct=True)
    distinct = {
        "initial": initial,
        "final": [x + expected_shift(8, 3, distinct=True) for x in initial],
    }
    assert check_model(distinct, 8, 3, distinct=True) == pytest.approx(3 * (1 + 4.5 / 1024))
    assert check_model(identical, 8, 3, distinct=False) == pytest.approx(3.0)


def test_a_server_that_reports_no_model_is_refused() -> None:
    with pytest.raises(BenchError, match="no model probe"):
        check_model({"initial": [1.0, 2.0]}, 2, 3, distinct=True)
    with pytest.raises(BenchError, match="no model probe"):
        check_model({"initial": [1.0, 2.0], "final": [4.0]}, 2, 3, distinct=True)
    with pytest.raises(BenchError, match="wrong model"):
        check_model({"initial": [], "final": []}, 2, 3, distinct=True)


def test_rounds_tile_the_strategy_run_and_ratios_use_medians_of_one_run() -> None:
    assert tile([10.0, 11.5, 12.0, 14.0]) == [1.5, 0.5, 2.0]
    other, base = spread([20.0, 24.0, 22.0]), spread([2.0, 1.0, 4.0])
    assert other == {"median": 22.0, "min": 20.0, "max": 24.0}
    assert ratio(other, base) == 11.0
    assert ratio(other, None) is None
    assert ratio(other, {"median": 0.0, "min": 0.0, "max": 0.0}) is None
    assert percentiles([0.001, 0.002, 0.003])["p50_ms"] == pytest.approx(2.0)


def test_tables_are_markdown_with_a_dash_for_a_missing_figure() -> None:
    lines = markdown_table(
        ["nodes", "Flower"], [["2", fmt_spread(spread([1.0, 3.0, 2.0]), 1, runs=3)], ["8", "-"]],
        left=1,
    )  # fmt: skip
    assert lines == [
        "| nodes |        Flower |",
        "| :---- | ------------: |",
        "| 2     | 2.0 (1.0-3.0) |",
        "| 8     |             - |",
    ]
    assert fmt_spread(None) == "-"
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [["1"]])


_GRANDCHILD = """
import sys, time
held = bytearray(64 << 20)
held[::4096] = b"x" * len(held[::4096])  # every page resident
print("held", flush=True)
sys.stdin.readline()
del held  # a block this large is its own mapping: freed, it leaves RSS at once
print("freed", flush=True)
time.sleep(3)
"""
_CHILD = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def _start_child() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, _GRANDCHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _next_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def _free(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("free\n")
    child.stdin.flush()


def _end(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    for pipe in (child.stdin, child.stdout):  # the grandchild reads EOF and ends
        if pipe is not None:
            pipe.close()


def test_the_sampler_counts_a_grandchild_that_appears_and_a_zombie_as_nothing() -> None:
    # The control: a process's statm gives what psutil calls rss.
    assert abs(rss_bytes(os.getpid()) - psutil.Process().memory_info().rss) < 4 << 20
    child = _start_child()
    try:
        with RssSampler({"root": child.pid}, interval=3600) as sampler:  # samples by hand
            assert _next_line(child) == "held"
            time.sleep(2 * TREE_REFRESH)  # the next sample scans /proc again
            sampler.sample()
            peak = sampler.peaks.roots["root"]
            assert peak.descendants >= 64 << 20
            assert peak.tree >= peak.own + (64 << 20)
            _free(child)
            assert _next_line(child) == "freed"
        # Exited and not reaped yet: a zombie, which counts 0.
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rss_bytes(child.pid) == 0
    finally:
        _end(child)


def test_a_peak_between_two_samples_is_missed_by_the_tree_but_not_by_the_exact_peak() -> None:
    child = _start_child()
    try:
        with RssSampler({"root": child.pid}, interval=3600) as sampler:  # samples by hand
            assert _next_line(child) == "held"
            _free(child)
            assert _next_line(child) == "freed"
            time.sleep(2 * TREE_REFRESH)
            sampler.sample()
            peak = sampler.peaks.roots["root"]
            assert 0 < peak.descendants < 64 << 20  # the grandchild, seen after its peak
            assert peak.largest_descendant >= 64 << 20
    finally:
        _end(child)


def test_the_plain_tls_bound_moves_every_byte_both_ways(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    size = 3 * CHUNK_SIZE + 5  # a short last write
    figures = measure_tls(pki, 2, size)  # byte counts are checked inside: BenchError if short
    assert (figures["streams"], figures["bytes_per_stream"]) == (2, size)
    assert figures["upload_mb_s"] > 0
    assert figures["download_mb_s"] > 0


def test_the_plain_tls_bound_is_mutual_tls(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    server = tls_context(ssl.PROTOCOL_TLS_SERVER, *pki.paths("server"), pki.trust_bundle_path)

    def handshake(client: ssl.SSLContext) -> BaseException | None:
        """What the server side met: None, or its error."""
        left, right = socket.socketpair()
        left.settimeout(10)
        right.settimeout(10)
        outcome: list[BaseException | None] = [None]

        def serve() -> None:
            try:
                with server.wrap_socket(right, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError) as error:
                outcome[0] = error

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with client.wrap_socket(left, server_hostname="localhost") as tls:
                tls.sendall(b"x")
        except (ssl.SSLError, OSError):
            pass
        thread.join(10)
        assert not thread.is_alive()
        return outcome[0]

    node = tls_context(ssl.PROTOCOL_TLS_CLIENT, *pki.paths("node-1"), pki.trust_bundle_path)
    assert handshake(node) is None  # control: a node's certificate from the project's CA
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(pki.trust_bundle_path)
    refused = handshake(anonymous)  # no client certificate: the server refuses it
    assert isinstance(refused, ssl.SSLError)
    assert refused.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_a_baseline_in_which_a_client_moved_fewer_bytes_is_refused() -> None:
    from harness.rawstream import stream_rates

    full = {"received": 100, "uploaded": 100, "download": [0.0, 0.5], "upload": [1.0, 2.0]}
    rates = stream_rates("plain TLS", [full, {**full, "download": [0.1, 1.0]}], 100)
    assert (rates["download_seconds"], rates["upload_seconds"]) == (1.0, 1.0)
    assert rates["download_mb_s"] == 200 / 1.0 / 1e6
    with pytest.raises(BenchError, match="plain TLS: wrong byte counts"):
        stream_rates("plain TLS", [full, {**full, "received": 99}], 100)


def test_a_plain_tls_bound_that_cannot_start_every_client_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    pki = make_test_pki(tmp_path / "pki")  # node-1 and node-2 only
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(FileNotFoundError, match="no certificate 'node-3'"):
        measure_tls(pki, 3, CHUNK_SIZE)  # two clients and the server already started
    left = [
        child for child in psutil.Process().children(recursive=True)
        if child.pid not in before and child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and "resource_tracker" not in " ".join(child.cmdline())  # multiprocessing's own
    ]  # fmt: skip
    assert left == []
