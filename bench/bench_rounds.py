"""Federated rounds end to end in flwrmtls: where a run's time goes, and what it costs in CPU.

Run ``.venv/bin/python bench/bench_rounds.py`` (``make bench`` runs it); ``--quick`` for two
small cells (about 30 s), ``--nodes``/``--model-mb``/``--repetitions``/``--rounds`` pick others,
``--identical-updates`` adds the identical-replies variant of each cell as extra rows.

Each cell (N nodes, M MiB) gets a new federation (flwrmtls.testing.federation: an mTLS link
with a CRL, N node processes with their own certificates) and R runs (default 3) of the
benchmarks' FedAvg workload (bench/apps/flwrmtls_fedavg: node K adds ``1 + K/1024``, so each
node's reply differs from every other's; the ServerApp's model is checked). Figures per run:

* wall time of ``flwrmtls run --stream``, split into start (command -> FedAvg starts), the
  rounds and end (last round -> command exits);
* each round split by the ServerApp's and ClientApps' own stamps: wait (-> send_and_receive),
  to clients (-> the last ClientApp has its message), client work (-> its handler returned),
  from clients (-> the replies are decoded in the ServerApp), aggregate (-> FedAvg's line);
* peak RSS of the link's and node 1's process trees;
* CPU seconds by role (CLI, link, ServerApp, nodes, ClientApps) from the command's start until
  the run's app processes have exited;
* the wire's bound for cells of ``WIRE_MIB`` MiB or more: the same bytes as a round (N x M
  down, then up) over a plain gRPC stream with mutual TLS between N client processes and one
  server process (``harness.rawstream``, as bench_limits), and the round as a fraction of it
  (wire seconds / round seconds); beside it the same bytes over plain TLS sockets, a process
  per connection (``harness.rawtls``: TLS alone, no gRPC), and the round as a fraction of that;
* "node killed mid-round": 3 nodes x 1 MiB (``--kill-nodes``/``--kill-model-mb``), the last
  node's ClientApp holds its reply in round 2 and the node is killed (SIGKILL) once the others
  have answered; the stall is the time from the kill to the end of the round (the link marks a
  node whose connection closed offline at once; a heartbeat lapse would take 12.5 s here).
  ``--kill-nodes 0`` leaves it out.

It only prints figures; nothing here asserts on timings. See docs/performance.md, "Rounds".
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from harness.cli import Workspace, base_parser, finish, positive, positive_float, run_main
from harness.flwrmtls_runs import (
    CPU_ROLES,
    PHASES,
    copy_app,
    issue_nodes,
    measure_fedavg_cell,
    measure_node_killed,
)
from harness.rawstream import measure_raw
from harness.rawtls import measure_tls
from harness.results import envelope
from harness.stats import spread
from harness.tables import fmt_spread, markdown_table
from harness.workload import DEFAULT_ROUNDS

from flwrmtls.testing.pki import make_test_pki

FULL_CELLS = ((2, 1.0), (8, 1.0), (32, 1.0), (2, 50.0), (8, 50.0))
QUICK_CELLS = ((2, 1.0), (8, 1.0))
DEFAULT_REPETITIONS = 3
WIRE_MIB = 10.0
"""Cells of at least this many MiB also measure the wire's bound (a plain TLS stream)."""


def cells_of(args: argparse.Namespace) -> list[tuple[int, float]]:
    if args.nodes or args.model_mb:
        return [(n, m) for m in args.model_mb or [1.0] for n in args.nodes or [2]]
    return list(QUICK_CELLS if args.quick else FULL_CELLS)


def summarize_detail(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Phases (round 1, later rounds) and CPU by role: medians over the runs."""
    later = slice(1, None) if all(len(r["round_seconds"]) > 1 for r in runs) else slice(0, 1)

    def phase(name: str, rounds: slice) -> dict[str, float]:
        return spread([p[name] for r in runs for p in r["detail"]["phases"][rounds]])

    cpu = {role: spread([r["detail"]["cpu_seconds"][role] for r in runs]) for role in CPU_ROLES}
    total = spread([sum(r["detail"]["cpu_seconds"].values()) for r in runs])
    busy = spread(
        [
            sum(r["detail"]["cpu_seconds"].values()) / (r["wall_seconds"] + r["idle_after_seconds"])
            for r in runs
        ]
    )
    return {
        "serverapp_peak_rss_mib": spread([r["detail"]["serverapp_peak_rss_mib"] for r in runs]),
        "clientapp_peak_rss_mib": spread([r["detail"]["clientapp_peak_rss_mib"] for r in runs]),
        "round_1_phases": {name: phase(name, slice(0, 1)) for name in PHASES},
        "later_round_phases": {name: phase(name, later) for name in PHASES},
        "cpu_seconds": cpu,
        "cpu_seconds_total": total,
        "cores_busy": busy,
    }


def measure_rounds(args: argparse.Namespace, space: Workspace) -> dict[str, Any]:
    cells = cells_of(args)
    pki = make_test_pki(space.path / "pki")
    issue_nodes(pki, max(max(n for n, _ in cells), args.kill_nodes))
    app = copy_app("flwrmtls_fedavg", space.path / "app")
    variants = [True, False] if args.identical_updates else [True]
    config = {
        "rounds": args.rounds,
        "repetitions": args.repetitions,
        "stagger_seconds": args.stagger,
        "identical_updates_too": args.identical_updates,
        "quick": args.quick,
        "kill_nodes": args.kill_nodes,
        "kill_model_mb": args.kill_model_mb,
    }
    result = {**envelope("bench_rounds", config), "cells": []}
    for nodes, model_mb in cells:
        for distinct in variants:
            directory = space.path / f"cell-{nodes}-{model_mb:g}-{'d' if distinct else 'i'}"
            cell = measure_fedavg_cell(
                pki, directory, space.env, app, nodes=nodes, model_mb=model_mb, mode="mtls",
                rounds=args.rounds, repetitions=args.repetitions, distinct=distinct,
                stagger=args.stagger,
            )  # fmt: skip
            cell["detail_summary"] = summarize_detail(cell["runs"])
            if distinct and model_mb >= WIRE_MIB:
                cell["wire"] = measure_raw(pki, nodes, int(model_mb * (1 << 20)))
                cell["tls"] = measure_tls(pki, nodes, int(model_mb * (1 << 20)))
            result["cells"].append(
                {"nodes": nodes, "model_mb": model_mb, "distinct": distinct, **cell}
            )
    if args.kill_nodes:
        result["node_killed"] = measure_node_killed(
            pki, space.path / "killed", space.env, app, nodes=args.kill_nodes,
            model_mb=args.kill_model_mb, repetitions=args.repetitions, stagger=args.stagger,
        )  # fmt: skip
    return result


def _label(cell: dict[str, Any]) -> list[str]:
    return [
        str(cell["nodes"]),
        f"{cell['model_mb']:g}",
        "distinct" if cell["distinct"] else "identical",
    ]


def render_rounds(result: dict[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    lines = [
        "flwrmtls rounds benchmark",
        f"  {result['date']}, flwrmtls {machine['flwrmtls']} at {result['revision']}, Python "
        f"{machine['python']}, grpcio {machine['grpcio']}, {machine['cpus_usable']} CPUs usable; "
        f"load average at the start {result['loadavg_start']:.2f}",
        f"  a new mTLS link (with a CRL) and N node processes per cell; {config['rounds']} FedAvg "
        f"rounds, no evaluation; {config['repetitions']} run(s) per cell: median (min-max); "
        "replies: distinct (node K adds 1 + K/1024) unless a row says identical",
        "",
        "1. Per run (seconds; RSS in MiB: the process with all its descendants, peak, sampled "
        "every 50 ms; ServerApp, ClientApp: the largest one's own peak, exact)",
        "",
    ]
    header = ["nodes", "MiB", "replies", "wall", "round 1", "rounds 2+", "per round", "link RSS",
              "node RSS", "ServerApp", "ClientApp"]  # fmt: skip
    rows = []
    for cell in result["cells"]:
        s, n, d = cell["summary"], len(cell["runs"]), cell["detail_summary"]
        rows.append(
            [
                *_label(cell),
                fmt_spread(s["wall_seconds"], 2, runs=n),
                fmt_spread(s["round_1_seconds"], 2, runs=n),
                fmt_spread(s["later_round_seconds"], 2, runs=n),
                fmt_spread(s["round_mean_seconds"], 2, runs=n),
                fmt_spread(s["link_peak_rss_mib"], 0, runs=n),
                fmt_spread(s["node_peak_rss_mib"], 0, runs=n),
                fmt_spread(d.get("serverapp_peak_rss_mib"), 0, runs=n),
                fmt_spread(d.get("clientapp_peak_rss_mib"), 0, runs=n),
            ]
        )
    lines += markdown_table(header, rows, left=3)
    lines += [
        "  node RSS: a ClientApp's peak may last less than 50 ms and be missed by the samples; "
        "the node beside its ClientApp's exact peak bounds it better (docs/performance.md)",
        "",
        "2. Where a run's time goes (medians, seconds)",
        "",
    ]
    header = ["nodes", "MiB", "replies", "start-up", "start", "end", "round", *PHASES]
    rows = []
    for cell in result["cells"]:
        s, d = cell["summary"], cell["detail_summary"]
        for label, key in (("1", "round_1_phases"), ("2+", "later_round_phases")):
            first = label == "1"
            rows.append(
                [
                    *(_label(cell) if first else ["", "", ""]),
                    f"{cell['startup_seconds']:.1f}" if first else "",
                    f"{s['start_seconds']['median']:.2f}" if first else "",
                    f"{s['end_seconds']['median']:.2f}" if first else "",
                    label,
                    *(f"{d[key][name]['median']:.3f}" for name in PHASES),
                ]
            )
    lines += markdown_table(header, rows, left=3)
    lines += [
        "",
        "  start-up: link + nodes until all online (not timed); start: command -> FedAvg "
        "starts; end: last round -> command exits",
        "",
        "3. CPU seconds per run by role (medians; the command's start until the run's app "
        "processes have exited)",
        "",
    ]
    header = ["nodes", "MiB", "replies", *CPU_ROLES, "total", "cores busy"]
    rows = []
    for cell in result["cells"]:
        d = cell["detail_summary"]
        rows.append(
            [
                *_label(cell),
                *(f"{d['cpu_seconds'][role]['median']:.2f}" for role in CPU_ROLES),
                f"{d['cpu_seconds_total']['median']:.2f}",
                f"{d['cores_busy']['median']:.2f}",
            ]
        )
    lines += markdown_table(header, rows, left=3)
    lines.append(f"  cores busy: CPU seconds / wall (this machine has {machine['cpus_usable']})")
    wired = [cell for cell in result["cells"] if "wire" in cell]
    if wired:
        lines += [
            "",
            "4. A round against the wire: the same bytes (N x M down, then up) over a plain gRPC "
            "stream with mutual TLS, N client processes and one server process; and over plain "
            "TLS sockets (no gRPC), a server process per connection",
            "",
        ]
        rows = []
        for cell in wired:
            wire, round_mean = cell["wire"], cell["summary"]["round_mean_seconds"]["median"]
            bound = wire["download_seconds"] + wire["upload_seconds"]
            tls = cell.get("tls")  # results saved before the plain-TLS bound have none
            tls_bound = tls["download_seconds"] + tls["upload_seconds"] if tls else None
            rows.append(
                [
                    *_label(cell),
                    f"{wire['download_mb_s']:.0f}",
                    f"{wire['upload_mb_s']:.0f}",
                    f"{bound:.2f}",
                    f"{tls_bound:.2f}" if tls_bound else "-",
                    f"{round_mean:.2f}",
                    f"{100 * bound / round_mean:.0f} %",
                    f"{100 * tls_bound / round_mean:.0f} %" if tls_bound else "-",
                ]
            )
        header = ["nodes", "MiB", "replies", "wire down MB/s", "wire up MB/s", "wire s",
                  "TLS s", "round s", "round at", "at TLS"]  # fmt: skip
        lines += markdown_table(header, rows, left=3)
        lines.append(
            "  round at: wire seconds / the round's seconds (median of the rounds' mean); at TLS: "
            "the same with the plain-TLS seconds"
        )
    killed = result.get("node_killed")
    if killed:
        lines += [
            "",
            "5. Node killed mid-round (SIGKILL once the others answered; seconds from the kill "
            "to the end of the round)",
            "",
        ]
        lines += markdown_table(
            ["case", "nodes", "MiB", "stall"],
            [["node killed mid-round", str(killed["nodes"]), f"{killed['model_mb']:g}",
              fmt_spread(killed["summary"], 2, runs=len(killed["stall_seconds"]))]],
            left=1,
        )  # fmt: skip
        lines.append(f"  the dead node's error reply: {killed['reason']}")
    if "elapsed_seconds" in result:
        lines.append(f"  total time {result['elapsed_seconds']:.0f} s")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument(
        "--repetitions",
        type=positive,
        help=f"runs per cell (default {DEFAULT_REPETITIONS}; 1 with --quick)",
    )
    p.add_argument("--nodes", type=positive, nargs="+", help="node counts (with --model-mb)")
    p.add_argument("--model-mb", type=positive_float, nargs="+", help="model sizes in MiB")
    p.add_argument("--rounds", type=positive, default=DEFAULT_ROUNDS, help="FedAvg rounds")
    p.add_argument("--stagger", type=float, default=0.2, help="seconds between node starts")
    p.add_argument(
        "--identical-updates",
        action="store_true",
        help="also run each cell with identical replies (every node adds 1), as extra rows",
    )
    p.add_argument(
        "--kill-nodes",
        type=int,
        default=3,
        help="nodes of the 'node killed mid-round' case (default 3; 0 leaves it out)",
    )
    p.add_argument(
        "--kill-model-mb",
        type=positive_float,
        default=1.0,
        help="model size of the 'node killed mid-round' case (MiB, default 1)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else DEFAULT_REPETITIONS
    return finish("bench_rounds", args, lambda space: measure_rounds(args, space), render_rounds)


if __name__ == "__main__":
    run_main(main)
