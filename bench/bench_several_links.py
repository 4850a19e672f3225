"""Several links: what PostgreSQL costs against SQLite, and what a second replica buys.

Run ``.venv/bin/python bench/bench_several_links.py`` (``make bench`` runs it); ``--quick`` for
small cells (a few minutes), ``--only rounds calls heartbeat`` picks sections. Every process is
real, on 127.0.0.1: a PostgreSQL server started here (flwrmtls.testing.postgres, a database of
its own per federation), link processes, haproxy in TCP mode in front of two replicas
(flwrmtls.testing.balancer), node processes or simulated nodes. Three set-ups:

* ``sqlite``: one link, its state in a SQLite file (the default);
* ``postgresql``: one link, its state in PostgreSQL;
* ``2 replicas``: two link processes on one PostgreSQL database and one object directory,
  nodes and the CLI through haproxy.

Sections:

* ``rounds``: the rounds benchmark's FedAvg workload (bench/apps/flwrmtls_fedavg, measured by
  bench/harness/flwrmtls_runs.py, as bench_rounds.py does) at 8 and 32 nodes x 1 and 50 MiB, on
  each set-up: a run's wall time and its time per round.
* ``calls``: one node's calls on an idle link, timed one after another: Heartbeat, and a
  PullMessages that finds nothing (``wait_seconds`` 0): the cost of a database write and of a
  delivery query, per engine.
* ``heartbeat``: N simulated nodes (default 1,000: bench/harness/simnodes.py, each its own
  connection and certificate) heartbeating at the link's interval, idle, on one PostgreSQL link
  and spread over two replicas, and N/1.8 on one link (the issue's goal: two replicas hold
  1.8x the nodes one holds at the same p99, i.e. p99 at N over two <= p99 at N/1.8 on one):
  heartbeat latency p50/p99 and failures, a probe node's, and the CPU the links, PostgreSQL
  and the simulated nodes used meanwhile (percent of one core; the machine's cores are shared
  by all of them).

It only prints figures; nothing here asserts on timings. docs/several-links.md has them.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import BenchError, progress
from harness.cli import Workspace, base_parser, finish, positive, positive_float, run_main
from harness.flwrmtls_runs import copy_app, issue_nodes, measure_fedavg_cell
from harness.procs import cpu_seconds, descendants
from harness.results import envelope
from harness.simnodes import (
    DEFAULT_WORKERS,
    PROBE_NAME,
    SIM_NODE_PREFIX,
    HeartbeatProbe,
    Workers,
)
from harness.stats import percentiles
from harness.tables import markdown_table

from flwrmtls.fleet.client import FleetClient
from flwrmtls.testing.federation import Federation, FederationError
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.postgres import PostgresServer, PostgresUnavailable
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.errors import ConnectionContext

SECTIONS = ("rounds", "calls", "heartbeat")
SETUPS = ("sqlite", "postgresql", "2 replicas")
FULL_CELLS = ((8, 1.0), (32, 1.0), (8, 50.0), (32, 50.0))
QUICK_CELLS = ((8, 1.0),)
DEFAULT_ROUNDS = 3
DEFAULT_CALLS = 2000
QUICK_CALLS = 300
DEFAULT_SIM_NODES = 1000
QUICK_SIM_NODES = 100
HEARTBEAT_INTERVAL = 10.0
QUICK_HEARTBEAT_INTERVAL = 2.0
GOAL = 1.8
"""Two replicas should hold this many times the nodes one link holds at the same p99."""


class _Engines:
    """The PostgreSQL server, and a fresh database for each federation."""

    def __init__(self) -> None:
        try:
            self.server = PostgresServer()
        except PostgresUnavailable as error:
            raise BenchError(f"PostgreSQL: {error}") from None

    def options(self, setup: str) -> dict[str, Any]:
        """The Federation options of ``setup``."""
        if setup == "sqlite":
            return {}
        url = self.server.create_database("bench")
        return {"database": url, "replicas": 2 if setup == "2 replicas" else 1}

    def pids(self) -> list[int]:
        """The server and its backends now."""
        return [self.server.pid, *descendants(self.server.pid)]

    def stop(self) -> None:
        self.server.stop()


def _cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid)[0] for pid in pids)


def calls_per_address(nodes: int) -> int:
    """Every simulated node shares 127.0.0.1 (and, behind haproxy, the balancer's address):
    what the link must allow at once from one address (as bench_limits.py's scale section)."""
    return 6 * (nodes + 1) + 100


# --- rounds ---------------------------------------------------------------------------------


def measure_rounds(
    args: argparse.Namespace, work: Path, env: dict[str, str], engines: _Engines
) -> list[dict[str, Any]]:
    cells: list[tuple[int, float]] = list(QUICK_CELLS if args.quick else FULL_CELLS)
    if args.nodes or args.model_mb:
        cells = [(n, m) for m in args.model_mb or [1.0] for n in args.nodes or [8]]
    pki = make_test_pki(work / "pki")
    issue_nodes(pki, max(n for n, _ in cells))
    app = copy_app("flwrmtls_fedavg", work / "app")
    found = []
    for nodes, model_mb in cells:  # the small cells first
        for setup in args.setups:
            progress(f"rounds: {setup}, {nodes} nodes x {model_mb:g} MiB")
            options = engines.options(setup)
            cell = measure_fedavg_cell(
                pki, work / f"{setup.replace(' ', '-')}-{nodes}-{model_mb:g}", env, app,
                nodes=nodes, model_mb=model_mb, mode="mtls", rounds=args.rounds,
                repetitions=args.repetitions, distinct=True, heartbeat_interval=args.round_interval,
                **options,
            )  # fmt: skip
            found.append({"setup": setup, "nodes": nodes, "model_mb": model_mb, **cell})
    return found


# --- calls ----------------------------------------------------------------------------------


def _client(port: int, pki: TestPki, name: str) -> tuple[FleetClient, Any]:
    import grpc

    chain, key = pki.paths(name)
    identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
    address = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(
        address,
        channel_credentials(pki.trust_bundle_path.read_bytes(), identity),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    context = ConnectionContext(
        address, tls=True, has_client_certificate=True, root_certificates=str(pki.trust_bundle_path)
    )
    return FleetClient(channel, context), channel


def _timed(call: Callable[[], object], count: int) -> dict[str, float]:
    for _ in range(min(50, count)):  # warm: connections, prepared statements
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def _time_calls(port: int, pki: TestPki, count: int) -> tuple[dict[str, float], dict[str, float]]:
    """(Heartbeat, empty PullMessages) latencies of node-1 on the link at ``port``."""
    client, channel = _client(port, pki, "node-1")
    with channel:
        session = client.activate()
        heartbeat = _timed(lambda: client.heartbeat(session), count)
        pull = _timed(lambda: client.pull(session, wait=0, active_run_ids=[]), count)
        client.deactivate(session)
    return heartbeat, pull


def measure_calls(
    args: argparse.Namespace, work: Path, env: dict[str, str], engines: _Engines
) -> list[dict[str, Any]]:
    pki = make_test_pki(work / "pki")
    found = []
    for setup in ("sqlite", "postgresql"):
        progress(f"calls: {setup}, {args.calls} of each")
        with Federation(
            pki, work / setup, env, [], heartbeat_interval=HEARTBEAT_INTERVAL,
            **engines.options(setup),
        ) as fed:  # fmt: skip
            heartbeat, pull = _time_calls(fed.fleet_port, pki, args.calls)
        found.append({"setup": setup, "heartbeat": heartbeat, "empty_pull": pull})
    return found


# --- heartbeat ------------------------------------------------------------------------------


@contextmanager
def _simulated(pki: TestPki, port: int, args: argparse.Namespace) -> Iterator[Workers]:
    workers = Workers(args.workers, f"127.0.0.1:{port}", pki.trust_bundle_path, pki, args.sim_nodes)
    try:
        workers.receive(timeout=300)
        yield workers
    finally:
        workers.stop()


def heartbeat_cells(nodes: int) -> list[tuple[str, int]]:
    """(set-up, simulated nodes): one link at N / GOAL and at N, two replicas at N."""
    return [("postgresql", math.ceil(nodes / GOAL)), ("postgresql", nodes), ("2 replicas", nodes)]


def measure_heartbeat(
    args: argparse.Namespace, work: Path, env: dict[str, str], engines: _Engines
) -> list[dict[str, Any]]:
    pki = make_test_pki(work / "pki")
    for index in range(1, args.sim_nodes + 1):
        pki.ca.issue_node(f"{SIM_NODE_PREFIX}{index}", organization=f"Sim {index}")
    pki.ca.issue_node(PROBE_NAME, organization="Probe")
    found = []
    for setup, nodes in heartbeat_cells(args.sim_nodes):
        progress(f"heartbeat: {nodes} simulated nodes, {setup}")
        fed = Federation(
            pki, work / f"{setup.replace(' ', '-')}-{nodes}", env, [],
            heartbeat_interval=args.interval,
            link_extra=["--max-calls-per-address", str(calls_per_address(nodes))],
            **engines.options(setup),
        )  # fmt: skip
        cell_args = argparse.Namespace(**{**vars(args), "sim_nodes": nodes})
        try:
            with fed, _simulated(pki, fed.fleet_port, cell_args) as workers:
                began = time.monotonic()
                connected = workers.ask("connect", timeout=900)
                activated = [t for answer in connected for t in answer["activated"]]
                progress(
                    f"  {len(activated)} active after {max(activated) - began:.1f} s; "
                    f"idle {args.idle_seconds:g} s"
                )
                probe = HeartbeatProbe(f"127.0.0.1:{fed.fleet_port}", pki)
                links, database, simulated = fed.link_pids(), engines.pids(), workers.pids()
                cpu_before = [_cpu(links), _cpu(database), _cpu(simulated)]
                start = time.monotonic()
                time.sleep(args.idle_seconds)
                end = time.monotonic()
                cpu_after = [_cpu(links), _cpu(database), _cpu(simulated)]
                probe.stop()
                reports = workers.ask("report", timeout=120)
        except FederationError as error:
            raise BenchError(f"heartbeat, {setup}: {error}") from None
        beats = [h for report in reports for h in report["heartbeats"] if start <= h[0] < end]
        links_cpu, database_cpu, simulated_cpu = (
            100 * (after - before) / (end - start)
            for before, after in zip(cpu_before, cpu_after, strict=True)
        )
        found.append(
            {
                "setup": setup,
                "nodes": nodes,
                "activated": len(activated),
                "connect_seconds": max(activated) - began if activated else None,
                "heartbeats": {
                    **percentiles([h[1] for h in beats if h[2]]),
                    "failed": sum(1 for h in beats if not h[2]),
                },
                "probe": percentiles([s[1] for s in probe.samples if start <= s[0] < end]),
                "cpu_percent": {
                    "links": links_cpu,
                    "postgresql": database_cpu,
                    "simulated": simulated_cpu,
                },
            }
        )
    return found


def goal_line(cells: Sequence[dict[str, Any]]) -> str | None:
    """Whether two replicas at N answered at a p99 no worse than one link at N / GOAL."""
    one = [c for c in cells if c["setup"] == "postgresql"]
    two = [c for c in cells if c["setup"] == "2 replicas"]
    if not one or not two:
        return None
    fewer, replicas = min(one, key=lambda c: c["nodes"]), max(two, key=lambda c: c["nodes"])
    if replicas["nodes"] < GOAL * fewer["nodes"] * 0.99:
        return None
    a, b = fewer["heartbeats"]["p99_ms"], replicas["heartbeats"]["p99_ms"]
    if a is None or b is None:
        return None
    verdict = "met" if b <= a else "NOT met"
    return (
        f"  goal ({GOAL:g}x the nodes at the same p99): two replicas at {replicas['nodes']} "
        f"nodes p99 {b:.2f} ms vs one link at {fewer['nodes']} p99 {a:.2f} ms: {verdict}"
    )


# --- output ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    """A percentile already in milliseconds."""
    return "-" if value is None else f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "flwrmtls several-links benchmark",
        f"  {result['date']}, flwrmtls {machine['flwrmtls']} at {result['revision']}, Python "
        f"{machine['python']}, {machine['cpus_usable']} CPUs usable (shared by every process: "
        "links, PostgreSQL, haproxy, nodes); load average at the start "
        f"{result['loadavg_start']:.2f}",
    ]
    if "rounds" in result:
        lines += ["", "1. FedAvg rounds (seconds; medians over the runs; distinct replies)", ""]
        header = ["nodes", "MiB", "set-up", "wall", "per round", "vs sqlite"]
        rows = []
        base: dict[tuple[int, float], float] = {}
        for cell in result["rounds"]:
            per_round = cell["summary"]["round_mean_seconds"]["median"]
            key = (cell["nodes"], cell["model_mb"])
            if cell["setup"] == "sqlite":
                base[key] = per_round
            ratio = per_round / base[key] if base.get(key) else float("nan")
            rows.append(
                [str(cell["nodes"]), f"{cell['model_mb']:g}", cell["setup"],
                 f"{cell['summary']['wall_seconds']['median']:.2f}", f"{per_round:.2f}",
                 f"{ratio:.2f}x"]
            )  # fmt: skip
        lines += markdown_table(header, rows, left=3)
    if "calls" in result:
        lines += ["", "2. One node's calls on an idle link (milliseconds)", ""]
        header = ["set-up", "heartbeat p50", "p99", "empty pull p50", "p99"]
        rows = [
            [c["setup"], _ms(c["heartbeat"]["p50_ms"]), _ms(c["heartbeat"]["p99_ms"]),
             _ms(c["empty_pull"]["p50_ms"]), _ms(c["empty_pull"]["p99_ms"])]
            for c in result["calls"]
        ]  # fmt: skip
        lines += markdown_table(header, rows, left=1)
    if "heartbeat" in result:
        lines += ["", "3. Simulated nodes heartbeating, idle (milliseconds)", ""]
        header = ["set-up", "nodes", "active", "connect s", "p50", "p99", "failed",
                  "probe p50", "probe p99", "CPU % links", "PostgreSQL", "sim. nodes"]  # fmt: skip
        rows = [
            [h["setup"], str(h["nodes"]), str(h["activated"]),
             "-" if h["connect_seconds"] is None else f"{h['connect_seconds']:.1f}",
             _ms(h["heartbeats"]["p50_ms"]), _ms(h["heartbeats"]["p99_ms"]),
             str(h["heartbeats"]["failed"]), _ms(h["probe"]["p50_ms"]),
             _ms(h["probe"]["p99_ms"]), f"{h['cpu_percent']['links']:.0f}",
             f"{h['cpu_percent']['postgresql']:.0f}", f"{h['cpu_percent']['simulated']:.0f}"]
            for h in result["heartbeat"]
        ]  # fmt: skip
        lines += markdown_table(header, rows, left=1)
        goal = goal_line(result["heartbeat"])
        if goal:
            lines += ["", goal]
    if "elapsed_seconds" in result:
        lines.append(f"  total time {result['elapsed_seconds']:.0f} s")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument("--only", choices=SECTIONS, nargs="+", help="sections (default: all)")
    p.add_argument("--repetitions", type=positive, help="runs per cell (default 2; quick 1)")
    p.add_argument("--rounds", type=positive, default=DEFAULT_ROUNDS, help="FedAvg rounds")
    p.add_argument("--setups", choices=SETUPS, nargs="+", default=list(SETUPS),
                   help="rounds: the set-ups (default: all three)")  # fmt: skip
    p.add_argument("--nodes", type=positive, nargs="+", help="rounds: node counts")
    p.add_argument("--model-mb", type=positive_float, nargs="+", help="rounds: model MiB")
    p.add_argument("--calls", type=positive, help=f"calls: of each (default {DEFAULT_CALLS})")
    p.add_argument("--sim-nodes", type=positive, help=f"heartbeat: default {DEFAULT_SIM_NODES}")
    p.add_argument(
        "--workers", type=positive, default=DEFAULT_WORKERS,
        help=f"heartbeat: worker processes (default {DEFAULT_WORKERS})",
    )  # fmt: skip
    p.add_argument(
        "--interval", type=float,
        help=f"the links' --heartbeat-interval (default {HEARTBEAT_INTERVAL:g}, the link's own "
        f"default; the heartbeat section's when --quick: {QUICK_HEARTBEAT_INTERVAL:g})",
    )  # fmt: skip
    p.add_argument("--idle-seconds", type=float, help="heartbeat: seconds measured")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quick = args.quick
    args.repetitions = args.repetitions or (1 if quick else 2)
    args.calls = args.calls or (QUICK_CALLS if quick else DEFAULT_CALLS)
    args.sim_nodes = args.sim_nodes or (QUICK_SIM_NODES if quick else DEFAULT_SIM_NODES)
    args.workers = min(args.workers, args.sim_nodes)
    args.round_interval = args.interval or HEARTBEAT_INTERVAL  # quick or not: nodes must not
    # be taken for offline because a loaded machine delayed their heartbeats mid-round
    args.interval = args.interval or (QUICK_HEARTBEAT_INTERVAL if quick else HEARTBEAT_INTERVAL)
    args.idle_seconds = args.idle_seconds or 3 * args.interval

    def measure(space: Workspace) -> dict[str, Any]:
        sections = args.only or list(SECTIONS)
        result: dict[str, Any] = envelope("bench_several_links", {"sections": sections,
                                                                  "quick": quick})  # fmt: skip
        engines = _Engines()
        try:
            for name, measure_section in (
                ("calls", measure_calls),
                ("rounds", measure_rounds),
                ("heartbeat", measure_heartbeat),
            ):
                if name in sections:
                    result[name] = measure_section(args, space.path / name, space.env, engines)
        finally:
            engines.stop()
        return result

    return finish("bench_several_links", args, measure, render)


if __name__ == "__main__":
    run_main(main)
