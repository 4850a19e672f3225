"""Against the limits: the authenticator's cost, large models, and 1,000 nodes on one link.

Run ``.venv/bin/python bench/bench_limits.py`` (``make bench`` runs it too); ``--only auth``,
``--only large`` or ``--only scale`` picks sections, ``--quick`` a small smoke version, ``--json``
JSON instead of the tables, ``--keep`` keeps the working directory (logs). The apps are
bench/apps/large_model and bench/apps/scale_round; the measuring code is in bench/harness
(auth.py, rawstream.py, simnodes.py). Everything runs as
real processes with real gRPC over TLS on 127.0.0.1 (ports chosen by the OS); the PKI, the
databases, the apps and every temporary file live in one directory made by
``tempfile.mkdtemp`` (under ``$TMPDIR``) and removed at the end. Key material is only ever
passed as file paths.

Sections (docs/performance.md, "Against the limits", says what each figure means):

* ``auth``: a Fleet call (Heartbeat) on a link with the mTLS authenticator, on the same link's
  EC-key listener, and on a server-TLS-only link with no authenticator (``--node-auth none``):
  latency on one channel, and throughput with several channels (each its own connection and
  node) and several calls in flight each. Prints mTLS / none for both (target: <= 5 % worse).
  The measuring code is authbench.py's (harness/auth.py: figures 2 and 4 there).
* ``large``: a model (default 1 GB = 10**9 bytes of float32 in 4 arrays) sent by a ServerApp to
  N nodes (default 1, 2 and 4; a new federation each) with one ``flwrmtls run``, and a
  model-sized, different update back from every node; next to it, a plain gRPC byte stream
  over TLS between processes on this machine, in the same chunk size, both directions. Prints
  MB/s (10**6 bytes per second; the definitions are in the output), the ratio to the plain
  stream (target: >= 50 %), and the link's peak RSS for each N (it should not grow with N).
* ``scale``: 1,000 simulated nodes in a few worker processes, each node its own grpc.aio
  channel, TCP + TLS connection and certificate, doing on the Fleet API what a node does
  (ActivateNode, Heartbeat at the link's interval, long-poll PullMessages, and on a message:
  GetRun, the bundle, the message's objects, a reply built with flwrmtls' own message code,
  PushMessages). Prints the time for all to connect, the link's RSS, heartbeat latency
  p50/p99, and one ``flwrmtls run`` whose ServerApp sends every node a small message and waits
  for all replies (target: link RSS <= 1 GB).

It only prints figures; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import BenchError, progress
from harness import auth as authbench
from harness.cli import Workspace, base_parser, finish, positive, run_main
from harness.flwrmtls_runs import client_stamps, copy_app, federation, issue_nodes, run_app
from harness.procs import RssSampler, children, mib, rss_bytes, thread_cpu_ns
from harness.rawstream import MB, measure_raw
from harness.results import envelope
from harness.simnodes import (
    DEFAULT_WORKERS,
    PROBE_INTERVAL,
    PROBE_NAME,
    PULL_WAIT,
    SIM_NODE_PREFIX,
    HeartbeatProbe,
    Workers,
    fleet_connections,
)
from harness.stats import percentiles
from harness.tables import markdown_table

from flwrmtls.errors import FlwrmtlsError
from flwrmtls.objects.store import CHUNK_SIZE
from flwrmtls.testing.federation import Federation, FederationError, list_nodes
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.credentials import load_tls_identity

SECTIONS = ("auth", "large", "scale")
AUTH_TARGET = 0.05
"""mTLS may cost at most 5 % over no authenticator (latency up, throughput down)."""

DEFAULT_AUTH_CALLS = 3000
QUICK_AUTH_CALLS = 300

DEFAULT_MODEL_MB = 1000.0
QUICK_MODEL_MB = 64.0
DEFAULT_LARGE_NODES = (1, 2, 4)
LARGE_TARGET = 0.5
"""flwrmtls should move a large model at >= 50 % of a plain gRPC byte stream's rate."""
MODEL_ARRAYS = 4
LARGE_RUN_TIMEOUT = 3600.0
IDLE_TIMEOUT = 60.0

DEFAULT_NODES = 1000
QUICK_NODES = 50
QUICK_WORKERS = 2
DEFAULT_HEARTBEAT_INTERVAL = 10.0
"""The link's own default --heartbeat-interval."""
QUICK_HEARTBEAT_INTERVAL = 2.0
IDLE_INTERVALS = 3
"""Heartbeat intervals the connected nodes idle for, before the round (2 with --quick)."""
SCALE_TARGET_MIB = 1e9 / (1 << 20)
"""The issue's 1 GB of link RSS (10**9 bytes), in MiB."""


# --- auth -------------------------------------------------------------------------------------


def measure_auth(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Heartbeat latency (one channel) and throughput (channels x depth) per authenticator."""
    pki = authbench.make_pki(work / "pki", throughput_nodes=args.channels)
    chain, key = pki.paths("node-1")
    identity = load_tls_identity(chain, key, cert_flag="node-1", key_flag="node-1")
    links = authbench.start_links(pki, work, env)
    try:
        mtls, ec_key, tls_only = authbench.link_targets(pki, links, identity)
        progress(f"auth: latency, {args.auth_calls} heartbeats per link on one channel")
        latency = authbench.bench_heartbeats([mtls, ec_key, tls_only], args.auth_calls)
        calls = 2 * args.auth_calls
        progress(f"auth: throughput, {calls} heartbeats per link, {args.channels} x {args.depth}")
        throughput = authbench.bench_throughput(
            [mtls, ec_key, tls_only], pki, channels=args.channels, depth=args.depth, calls=calls
        )
    except (FlwrmtlsError, OSError) as error:
        tails = "\n".join(f"--- {name} log:\n{link.log[-2000:]}" for name, link in links.items())
        raise BenchError(f"auth: {error}\n{tails}") from None
    finally:
        authbench.stop_links(links)
    by_latency = {row.link: row for row in latency}
    by_throughput = {row.link: row for row in throughput}
    m, n = by_latency["mtls"], by_latency["tls-only"]
    tm, tn = by_throughput["mtls"], by_throughput["tls-only"]

    def cpu_ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    overhead = {
        # > 0: mTLS is slower / does fewer calls per second than no authenticator.
        "latency_p50": m.summary.p50_ms / n.summary.p50_ms - 1,
        "latency_mean": m.summary.mean_ms / n.summary.mean_ms - 1,
        "latency_link_cpu": _minus_one(cpu_ratio(m.link_cpu_us_per_call, n.link_cpu_us_per_call)),
        "throughput": 1 - tm.summary.per_second / tn.summary.per_second,
        "throughput_p50": tm.summary.p50_ms / tn.summary.p50_ms - 1,
        "throughput_link_cpu": _minus_one(
            cpu_ratio(tm.link_cpu_us_per_call, tn.link_cpu_us_per_call)
        ),
    }
    return {
        "latency": [asdict(row) for row in latency],
        "throughput": [asdict(row) for row in throughput],
        "mtls_over_none": overhead,
        "ratios": {
            "latency_p50_mtls_over_none": m.summary.p50_ms / n.summary.p50_ms,
            "latency_mean_mtls_over_none": m.summary.mean_ms / n.summary.mean_ms,
            "throughput_mtls_over_none": tm.summary.per_second / tn.summary.per_second,
            "throughput_ec_key_over_none": by_throughput["ec-key"].summary.per_second
            / tn.summary.per_second,
            "latency_p50_ec_key_over_none": by_latency["ec-key"].summary.p50_ms / n.summary.p50_ms,
        },
        "target": AUTH_TARGET,
        "config": {
            "latency_calls": args.auth_calls,
            "throughput_calls": calls,
            "channels": args.channels,
            "depth": args.depth,
        },
    }


def _minus_one(value: float | None) -> float | None:
    return None if value is None else value - 1


def _label(link: str) -> str:
    return {
        "mtls": "mTLS (client cert + CRL)",
        "ec-key": "EC-key P-384 (same link)",
        "tls-only": "none (server TLS only)",
    }[link]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} %"


def render_auth(auth: dict[str, Any]) -> list[str]:
    config = auth["config"]
    lines = [
        "1. Authenticator cost: Heartbeat on the Fleet API (links: subprocesses; client: this "
        "process)",
        f"   latency: one channel, {config['latency_calls']} calls per link one after another; "
        f"throughput: {config['channels']} channels (each its own connection and node) x "
        f"{config['depth']} calls in flight, {config['throughput_calls']} calls per link; "
        "rounds alternate between the links",
    ]
    header = ["authenticator", "lat p50", "lat p99", "calls/s", "CPU/call", "load c/s",
              "load p50", "load p99", "CPU/call"]  # fmt: skip
    table: list[list[str]] = []
    throughput = {row["link"]: row for row in auth["throughput"]}
    for row in auth["latency"]:
        s, t = row["summary"], throughput[row["link"]]
        ts = t["summary"]
        table.append(
            [
                _label(row["link"]),
                f"{s['p50_ms'] * 1000:.0f} us",
                f"{s['p99_ms'] * 1000:.0f} us",
                f"{s['per_second']:.0f}",
                _us(row["link_cpu_us_per_call"]),
                f"{ts['per_second']:.0f}",
                f"{ts['p50_ms']:.1f} ms",
                f"{ts['p99_ms']:.1f} ms",
                _us(t["link_cpu_us_per_call"]),
            ]
        )
    lines += ["", *markdown_table(header, table, left=1), ""]
    o = auth["mtls_over_none"]
    target = auth["target"] * 100
    lines += [
        "   (CPU/call: the link process's CPU time per call, all threads)",
        f"   mTLS over none, one channel: latency p50 {_percent(o['latency_p50'])}, mean "
        f"{_percent(o['latency_mean'])}, link CPU/call {_percent(o['latency_link_cpu'])}",
        f"   mTLS over none, under load: throughput {_percent(-o['throughput'])} calls/s, "
        f"p50 {_percent(o['throughput_p50'])}, link CPU/call {_percent(o['throughput_link_cpu'])}",
        f"   target: mTLS at most {target:.0f} % over none: latency p50 "
        f"{'met' if o['latency_p50'] <= auth['target'] else 'NOT met'}, throughput "
        f"{'met' if o['throughput'] <= auth['target'] else 'NOT met'}",
    ]
    return lines


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} us"


# --- large -----------------------------------------------------------------------------------


def wait_one_child_each(fed: Federation, timeout: float = IDLE_TIMEOUT) -> bool:
    """A node keeps a spare ClientApp process ready and the link a spare ServerApp, so a
    run's app processes are gone once each of them has at most one child left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(children(pid)) <= 1 for pid in [fed.link_pid(), *fed.node_pids()]):
            return True
        time.sleep(0.1)
    return False


def measure_large_cell(
    pki: TestPki, work: Path, app_dir: Path, env: dict[str, str], nodes: int, size: int
) -> dict[str, Any]:
    fed = federation(pki, work / f"large-{nodes}", env, nodes)
    begun = time.monotonic()
    try:
        with fed:
            startup = time.monotonic() - begun
            link_pid = fed.link_pid()
            link_idle = rss_bytes(link_pid)
            assert fed.link is not None
            probe = HeartbeatProbe(f"127.0.0.1:{fed.link.fleet_port}", pki)
            progress(f"large: {nodes} node(s) online after {startup:.1f} s; {size / MB:g} MB")
            try:
                with RssSampler({"link": link_pid}, {"nodes": fed.node_pids()}) as sampler:
                    command = run_app(
                        env, app_dir,
                        {"nodes": nodes, "model-bytes": size, "arrays": MODEL_ARRAYS},
                        LARGE_RUN_TIMEOUT,
                    )  # fmt: skip
                    wait_one_child_each(fed)
            finally:
                probe.stop()
            clients = client_stamps(fed.nodes, command.run_id, "BENCH-CLIENT", nodes)
    except FederationError as error:
        raise BenchError(f"large, {nodes} node(s): {error}") from None
    except BenchError as error:
        raise BenchError(f"large, {nodes} node(s): {error}\n{fed.log_tails()}") from None
    server, wall = command.server, command.exited - command.started
    if len(clients) != nodes:
        raise BenchError(f"large, {nodes} node(s): {len(clients)} ClientApp stamps")
    model_bytes = int(server["model_bytes"])
    sent, done = float(server["sent"]), float(server["done"])
    last_received = max(c["received"] for c in clients)
    first_replied = min(c["replied"] for c in clients)
    last_replied = max(c["replied"] for c in clients)
    broadcast = last_received - sent
    back = done - first_replied
    link, node = sampler.peaks.roots["link"], sampler.peaks.groups["nodes"]
    return {
        "nodes": nodes,
        "model_bytes": model_bytes,
        "reply_bytes": int(server["reply_bytes"]),
        "startup_seconds": startup,
        "run_wall_seconds": wall,
        "warm_up_seconds": float(server["warm_end"]) - float(server["warm_start"]),
        "broadcast_seconds": broadcast,
        "client_seconds": last_replied - last_received,
        "return_seconds": back,
        "round_trip_seconds": done - sent,
        "broadcast_mb_s": nodes * model_bytes / broadcast / MB,
        "return_mb_s": nodes * model_bytes / back / MB,
        "round_trip_mb_s": 2 * nodes * model_bytes / (done - sent) / MB,
        "link_idle_rss_mib": mib(link_idle),
        "link_peak_rss_mib": mib(link.own),
        "serverapp_peak_rss_mib": mib(link.descendants),
        "node_peak_rss_mib": mib(node.own),
        "clientapp_peak_rss_mib": mib(node.descendants),
        "rss_samples": sampler.peaks.samples,
        "link_rss_trace_mib": [(t, round(mib(b), 1)) for t, b in sampler.peaks.trace],
        "probe_heartbeat": {
            **percentiles([h[1] for h in probe.samples if sent <= h[0] < done and h[2]]),
            "failed": sum(1 for h in probe.samples if sent <= h[0] < done and not h[2]),
        },
    }


def measure_large(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    step = 4 * MODEL_ARRAYS
    size = int(args.model_mb * MB) // step * step
    pki = make_test_pki(work / "pki")
    issue_nodes(pki, max(args.large_nodes))
    pki.ca.issue_node(PROBE_NAME, organization="Probe")
    app_dir = copy_app("large_model", work / "app")
    cells = []
    for nodes in args.large_nodes:
        progress(f"large: plain gRPC stream over TLS, {nodes} stream(s) x {size / MB:g} MB")
        raw = measure_raw(pki, nodes, size)
        cell = measure_large_cell(pki, work, app_dir, env, nodes, size)
        cell["raw"] = raw
        cell["broadcast_over_raw"] = cell["broadcast_mb_s"] / raw["download_mb_s"]
        cell["return_over_raw"] = cell["return_mb_s"] / raw["upload_mb_s"]
        cells.append(cell)
        progress(
            f"large: {nodes} node(s): broadcast {cell['broadcast_mb_s']:.0f} MB/s (raw "
            f"{raw['download_mb_s']:.0f}), return {cell['return_mb_s']:.0f} MB/s (raw "
            f"{raw['upload_mb_s']:.0f}), link peak {cell['link_peak_rss_mib']:.0f} MiB"
        )
    return {
        "model_bytes": size,
        "arrays": MODEL_ARRAYS,
        "chunk_bytes": CHUNK_SIZE,
        "target": LARGE_TARGET,
        "cells": cells,
    }


def render_large(large: dict[str, Any]) -> list[str]:
    size = large["model_bytes"] / MB
    lines = [
        f"2. Large model: {size:g} MB (float32, {large['arrays']} arrays) to N nodes, and a "
        "model-sized update (model + node index) back from each; one `flwrmtls run` on a new "
        "mTLS federation per N",
        "   MB/s = 10**6 bytes/s. broadcast: N x model bytes / (ServerApp calls "
        "send_and_receive -> the last ClientApp's handler starts, arrays decoded); return: "
        "N x model bytes / (the first ClientApp's handler returns -> send_and_receive returns, "
        "replies decoded); round trip: 2 x N x model bytes / send_and_receive. raw: N client "
        "processes, one grpc.aio server process, mutual TLS, "
        f"{large['chunk_bytes'] // 1024} KiB chunks, N x model bytes down, then up.",
    ]
    header = ["nodes", "broadcast", "raw down", "ratio", "return", "raw up", "ratio",
              "round trip", "link RSS", "ServerApp", "node", "ClientApp"]  # fmt: skip
    table: list[list[str]] = []
    for cell in large["cells"]:
        raw = cell["raw"]
        table.append(
            [
                str(cell["nodes"]),
                f"{cell['broadcast_mb_s']:.0f} MB/s",
                f"{raw['download_mb_s']:.0f}",
                f"{cell['broadcast_over_raw'] * 100:.0f} %",
                f"{cell['return_mb_s']:.0f} MB/s",
                f"{raw['upload_mb_s']:.0f}",
                f"{cell['return_over_raw'] * 100:.0f} %",
                f"{cell['round_trip_mb_s']:.0f} MB/s",
                f"{cell['link_peak_rss_mib']:.0f} MiB",
                f"{cell['serverapp_peak_rss_mib']:.0f} MiB",
                f"{cell['node_peak_rss_mib']:.0f} MiB",
                f"{cell['clientapp_peak_rss_mib']:.0f} MiB",
            ]
        )
    lines += ["", *markdown_table(header, table, left=1), ""]
    for cell in large["cells"]:
        lines.append(
            f"   N={cell['nodes']}: broadcast {cell['broadcast_seconds']:.1f} s, ClientApps "
            f"{cell['client_seconds']:.1f} s, return {cell['return_seconds']:.1f} s; the run "
            f"command {cell['run_wall_seconds']:.1f} s (warm-up round "
            f"{cell['warm_up_seconds']:.1f} s); raw down {cell['raw']['download_seconds']:.1f} s, "
            f"up {cell['raw']['upload_seconds']:.1f} s, raw server peak RSS "
            f"{cell['raw']['server_peak_rss_mib']:.0f} MiB (it holds the model: "
            f"{cell['raw']['server_model_mib']:.0f} MiB)"
        )
    for cell in large["cells"]:
        lines.append(
            f"   N={cell['nodes']}: a probe node's Heartbeat (every {PROBE_INTERVAL * 1000:.0f} "
            "ms, from the benchmark's process) while the model moved: "
            + _beats(cell["probe_heartbeat"])
        )
    idle = ", ".join(f"{c['link_idle_rss_mib']:.0f}" for c in large["cells"])
    lines.append(
        f"   RSS: peaks during the run command; link: the link process alone (idle before: "
        f"{idle} MiB); ServerApp: the link's children (the run's ServerApp, and a spare one "
        "once the link keeps it); node: the largest node process; "
        "ClientApp: the largest sum of a node's children (the run's ClientApp and the node's "
        "spare one)"
    )
    target = large["target"]
    worst = min(min(c["broadcast_over_raw"], c["return_over_raw"]) for c in large["cells"])
    first, last = large["cells"][0], large["cells"][-1]
    lines.append(
        f"   target >= {target * 100:.0f} % of the raw stream: "
        f"{'met' if worst >= target else 'NOT met'} (lowest {worst * 100:.0f} %); link peak RSS "
        f"with {first['nodes']} -> {last['nodes']} node(s): {first['link_peak_rss_mib']:.0f} -> "
        f"{last['link_peak_rss_mib']:.0f} MiB"
    )
    return lines


# --- scale -----------------------------------------------------------------------------------


def calls_per_address(nodes: int) -> int:
    """What the scale section's link allows from 127.0.0.1 (``--max-calls-per-address``): every
    simulated node's long poll, heartbeat and the calls answering a message (at most 4 object
    streams), the probe's, and the CLI's. The link's default (1000) is for one real node per
    address; all simulated nodes share this one."""
    return 6 * (nodes + 1) + 100


def online_count(link: Federation) -> int:
    return sum(1 for node in list_nodes(link.env) if node.get("status") == "online")


def measure_scale(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    count = args.nodes
    pki = make_test_pki(work / "pki")
    began = time.monotonic()
    for index in range(1, count + 1):
        pki.ca.issue_node(f"{SIM_NODE_PREFIX}{index}", organization=f"Sim {index}")
    pki.ca.issue_node(PROBE_NAME, organization="Probe")
    progress(f"scale: {count} node certificates issued in {time.monotonic() - began:.1f} s")
    app_dir = copy_app("scale_round", work / "app")
    # Every simulated node shares 127.0.0.1, as nodes behind one NAT address do: each holds a
    # long poll and a heartbeat at times, so the link is told to allow that many calls at once.
    link = Federation(
        pki, work / "link", env, [], heartbeat_interval=args.heartbeat_interval,
        link_extra=["--max-calls-per-address", str(calls_per_address(count))],
    )  # fmt: skip
    workers: Workers | None = None
    probe: HeartbeatProbe | None = None
    try:
        link.start()
        assert link.link is not None
        link_pid = link.link_pid()
        port = link.link.fleet_port
        rss: dict[str, float] = {"idle_no_nodes": mib(rss_bytes(link_pid))}
        workers = Workers(
            args.workers, f"127.0.0.1:{port}", pki.trust_bundle_path, pki, count
        )  # fmt: skip
        workers.receive(timeout=300)  # each has loaded its certificates and made its channels
        with RssSampler({"link": link_pid}, {"workers": workers.pids()}) as whole:
            cpu_before = thread_cpu_ns(link_pid)
            go = time.monotonic()
            connected = workers.ask("connect", timeout=900)
            activated = [t for answer in connected for t in answer["activated"]]
            all_active = max(activated) - go if activated else float("nan")
            progress(f"scale: {len(activated)} of {count} nodes active after {all_active:.1f} s")
            while (online := online_count(link)) < len(activated):
                if time.monotonic() - go > 900:
                    raise BenchError(f"only {online} of {len(activated)} nodes online")
                time.sleep(0.5)
            all_online = time.monotonic() - go
            connections = fleet_connections(port)
            rss["connected"] = mib(rss_bytes(link_pid))
            cpu_connected = thread_cpu_ns(link_pid)
            progress(
                f"scale: the link lists {online} online after {all_online:.1f} s; "
                f"{connections} connections to its Fleet port; RSS {rss['connected']:.0f} MiB; "
                f"idle for {args.idle_seconds:g} s"
            )
            probe = HeartbeatProbe(f"127.0.0.1:{port}", pki)
            idle_start = time.monotonic()
            time.sleep(args.idle_seconds)
            idle_end = time.monotonic()
            cpu_idle = thread_cpu_ns(link_pid)
            rss["after_idle"] = mib(rss_bytes(link_pid))
            progress(f"scale: `flwrmtls run` to {len(activated)} nodes")
            with RssSampler({"link": link_pid}) as during_round:
                round_start = time.monotonic()
                command = run_app(
                    env, app_dir, {"nodes": len(activated), "timeout": float(args.round_timeout)},
                    args.round_timeout + 300,
                )  # fmt: skip
                round_end = time.monotonic()
            run_id, server = command.run_id, command.server
            wall = command.exited - command.started
            cpu_round = thread_cpu_ns(link_pid)
            connections_after = fleet_connections(port)
            reports = workers.ask("report", timeout=120)
        probe.stop()
        probe_samples = probe.samples
        probe = None
        workers.stop()
        workers = None
    except (BenchError, FederationError, FlwrmtlsError, OSError) as error:
        raise BenchError(f"scale: {error}\n{link.log_tails()}") from None
    finally:
        if probe is not None:
            probe.stop()
        if workers is not None:
            workers.stop()
        link.stop()
    heartbeats = [h for report in reports for h in report["heartbeats"]]
    handled = [h for report in reports for h in report["handled"]]
    errors: dict[str, int] = {}
    for report in reports:  # each worker's counts since its start
        for key, value in report["errors"].items():
            errors[key] = errors.get(key, 0) + value
    first_errors = [e for report in reports for e in report["first_errors"]][:10]

    def window(
        start: float, end: float, samples: Sequence[Sequence[Any]] = heartbeats
    ) -> dict[str, float]:
        return {
            **percentiles([h[1] for h in samples if start <= h[0] < end and h[2]]),
            "failed": sum(1 for h in samples if start <= h[0] < end and not h[2]),
        }

    sent, done = float(server["sent"]), float(server["done"])
    received = [h[0] for h in handled if h[0] >= sent]
    replied = [h[1] for h in handled if h[0] >= sent]

    def cpu(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else (b - a) / 1e9

    idle_beats = window(idle_start, idle_end)
    probe_idle = window(idle_start, idle_end, probe_samples)
    idle_cpu = cpu(cpu_connected, cpu_idle)
    return {
        "nodes": count,
        "workers": args.workers,
        "heartbeat_interval": args.heartbeat_interval,
        "idle_seconds": idle_end - idle_start,
        "activated": len(activated),
        "activation_retries": sum(answer["retries"] for answer in connected),
        "connect_seconds": all_active,
        "online_seconds": all_online,
        "fleet_connections": connections,
        "fleet_connections_after_round": connections_after,
        "link_rss_mib": {
            **rss,
            "peak_round": mib(during_round.peaks.roots["link"].own),
            "peak": mib(whole.peaks.roots["link"].own),
        },
        "serverapp_peak_rss_mib": mib(during_round.peaks.roots["link"].descendants),
        "worker_peak_rss_mib": mib(whole.peaks.groups["workers"].own),
        "link_cpu_seconds": {
            "connect": cpu(cpu_before, cpu_connected),
            "idle": idle_cpu,
            "round": cpu(cpu_idle, cpu_round),
        },
        "link_idle_cpu_cores": None if idle_cpu is None else idle_cpu / (idle_end - idle_start),
        "heartbeat_idle": idle_beats,
        "heartbeat_round": window(round_start, round_end),
        "heartbeat_all": window(0.0, float("inf")),
        "probe_interval": PROBE_INTERVAL,
        "probe_idle": probe_idle,
        "probe_round": window(round_start, round_end, probe_samples),
        "round": {
            "run_id": run_id,
            "run_wall_seconds": wall,
            "wait_for_nodes_seconds": float(server["online"]) - float(server["entered"]),
            "send_and_receive_seconds": done - sent,
            "last_delivered_seconds": max(received) - sent if received else None,
            "last_reply_pushed_seconds": max(replied) - sent if replied else None,
            "delivery": percentiles([t - sent for t in received]),
            "messages": int(server["messages"]),
            "answered": int(server["answered"]),
            "error_replies": server["errors"],
        },
        "errors": errors,
        "first_errors": first_errors,
        "target_rss_mib": SCALE_TARGET_MIB,
    }


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _beats(window: dict[str, Any]) -> str:
    return (
        f"p50 {window['p50_ms']:.1f} ms, p99 {window['p99_ms']:.1f} ms, max "
        f"{window['max_ms']:.0f} ms ({window['count']} calls, {window['failed']} failed)"
    )


def render_scale(scale: dict[str, Any]) -> list[str]:
    r, rss = scale["round"], scale["link_rss_mib"]
    idle, during = scale["heartbeat_idle"], scale["heartbeat_round"]
    cpu = scale["link_cpu_seconds"]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    lines = [
        f"3. Scale: {scale['nodes']} simulated nodes in {scale['workers']} worker processes (each "
        "node: its own grpc.aio channel, TCP + TLS connection and certificate); one mTLS link "
        f"with --heartbeat-interval {scale['heartbeat_interval']:g}",
        f"   connect: all {scale['activated']} ActivateNode calls done "
        f"{scale['connect_seconds']:.1f} s after the start (all at once; "
        f"{scale['activation_retries']} retries); the link lists "
        f"them online after {scale['online_seconds']:.1f} s; established connections to the "
        f"Fleet port: {scale['fleet_connections']} (after the round: "
        f"{scale['fleet_connections_after_round']}, with the probe's)",
        f"   link RSS: {rss['idle_no_nodes']:.0f} MiB with no node, {rss['connected']:.0f} MiB "
        f"with all connected, {rss['after_idle']:.0f} MiB after {scale['idle_seconds']:.0f} s "
        f"idle, peak {rss['peak_round']:.0f} MiB during the round, {rss['peak']:.0f} MiB "
        f"overall (target <= {scale['target_rss_mib']:.0f} MiB: "
        f"{'met' if rss['peak'] <= scale['target_rss_mib'] else 'NOT met'}); ServerApp peak "
        f"{scale['serverapp_peak_rss_mib']:.0f} MiB",
        f"   heartbeat latency, the simulated nodes' own calls: {_beats(idle)} while idle; "
        f"{_beats(during)} during the round",
        f"   heartbeat latency, a probe node in the benchmark's process (a Heartbeat every "
        f"{scale['probe_interval'] * 1000:.0f} ms): {_beats(scale['probe_idle'])} while idle; "
        f"{_beats(scale['probe_round'])} during the round",
        f"   the round (`flwrmtls run`, one small message to each node, wait for all replies): "
        f"send_and_receive {r['send_and_receive_seconds']:.2f} s ({r['answered']} of "
        f"{r['messages']} answered; error replies {r['error_replies'] or 'none'}); last message "
        f"delivered after {seconds(r['last_delivered_seconds'])} (p50 "
        f"{r['delivery']['p50_ms'] / 1000:.2f} s), last reply pushed after "
        f"{seconds(r['last_reply_pushed_seconds'])}; the run command "
        f"{r['run_wall_seconds']:.1f} s (wait_for_nodes {r['wait_for_nodes_seconds']:.2f} s)",
        f"   link CPU: connect {seconds(cpu['connect'])}, idle {seconds(cpu['idle'])} "
        f"({_cores(scale['link_idle_cpu_cores'])} of a core: heartbeats, long polls renewed "
        f"every {PULL_WAIT:g} s, the probe), round "
        f"{seconds(cpu['round'])}; worker peak RSS {scale['worker_peak_rss_mib']:.0f} MiB",
    ]
    if scale["errors"]:
        lines.append(f"   errors seen by the simulated nodes: {scale['errors']}")
        lines += [f"     {error}" for error in scale["first_errors"][:5]]
    return lines


# --- output and main -------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "flwrmtls against the limits",
        f"  {result['date']}, revision {result['revision']}, load average at the start "
        f"{result['loadavg_start']:.2f}; flwrmtls {machine['flwrmtls']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, numpy {machine['numpy']}",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f", {machine['memory_gib']} GiB; {machine['platform']}",
    ]
    if "auth" in result:
        lines += ["", *render_auth(result["auth"])]
    if "large" in result:
        lines += ["", *render_large(result["large"])]
    if "scale" in result:
        lines += ["", *render_scale(result["scale"])]
    if "elapsed_seconds" in result:
        lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument(
        "--only",
        choices=SECTIONS,
        nargs="+",
        help="run only these sections (default: all three)",
    )
    auth = p.add_argument_group("auth")
    auth.add_argument(
        "--auth-calls",
        type=positive,
        help=f"heartbeats per link on one channel (default {DEFAULT_AUTH_CALLS}, quick "
        f"{QUICK_AUTH_CALLS}); twice as many for throughput",
    )
    auth.add_argument(
        "--channels",
        type=positive,
        default=authbench.DEFAULT_CHANNELS,
        help=f"throughput: channels per link (default {authbench.DEFAULT_CHANNELS})",
    )
    auth.add_argument(
        "--depth",
        type=positive,
        default=authbench.DEFAULT_DEPTH,
        help=f"throughput: calls in flight per channel (default {authbench.DEFAULT_DEPTH})",
    )
    large = p.add_argument_group("large")
    large.add_argument(
        "--model-mb",
        type=float,
        help=f"model size in MB (10**6 bytes; default {DEFAULT_MODEL_MB:g}, quick "
        f"{QUICK_MODEL_MB:g})",
    )
    large.add_argument(
        "--large-nodes",
        type=positive,
        nargs="+",
        help="node counts, a new federation each (default 1 2 4)",
    )
    scale = p.add_argument_group("scale")
    scale.add_argument(
        "--nodes",
        type=positive,
        help=f"simulated nodes (default {DEFAULT_NODES}, quick {QUICK_NODES})",
    )
    scale.add_argument(
        "--workers",
        type=positive,
        help=f"worker processes for them (default {DEFAULT_WORKERS}, quick {QUICK_WORKERS})",
    )
    scale.add_argument(
        "--heartbeat-interval",
        type=float,
        help=f"the link's --heartbeat-interval (default {DEFAULT_HEARTBEAT_INTERVAL:g}, quick "
        f"{QUICK_HEARTBEAT_INTERVAL:g})",
    )
    scale.add_argument(
        "--idle-seconds",
        type=float,
        help=f"seconds all nodes idle before the round (default {IDLE_INTERVALS} heartbeat "
        "intervals, quick 2)",
    )
    scale.add_argument(
        "--round-timeout",
        type=float,
        default=600.0,
        help="seconds the round's ServerApp waits for replies (default 600)",
    )
    return p


def apply_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.auth_calls is None:
        args.auth_calls = QUICK_AUTH_CALLS if quick else DEFAULT_AUTH_CALLS
    if args.model_mb is None:
        args.model_mb = QUICK_MODEL_MB if quick else DEFAULT_MODEL_MB
    if args.large_nodes is None:
        args.large_nodes = list(DEFAULT_LARGE_NODES)
    if args.nodes is None:
        args.nodes = QUICK_NODES if quick else DEFAULT_NODES
    if args.workers is None:
        args.workers = min(QUICK_WORKERS if quick else DEFAULT_WORKERS, args.nodes)
    if args.heartbeat_interval is None:
        args.heartbeat_interval = QUICK_HEARTBEAT_INTERVAL if quick else DEFAULT_HEARTBEAT_INTERVAL
    if args.idle_seconds is None:
        args.idle_seconds = args.heartbeat_interval * (2 if quick else IDLE_INTERVALS)


def measure_limits(args: argparse.Namespace, space: Workspace) -> dict[str, Any]:
    sections = args.only or list(SECTIONS)
    config = {"sections": sections, "quick": args.quick}
    result: dict[str, Any] = {**envelope("bench_limits", config), "sections": sections}
    if "auth" in sections:
        result["auth"] = measure_auth(args, space.path / "auth", space.env)
    if "large" in sections:
        result["large"] = measure_large(args, space.path / "large", space.env)
    if "scale" in sections:
        result["scale"] = measure_scale(args, space.path / "scale", space.env)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_defaults(args)
    return finish("bench_limits", args, lambda space: measure_limits(args, space), render)


if __name__ == "__main__":
    run_main(main)
