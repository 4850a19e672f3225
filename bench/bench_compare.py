"""Side by side: Flower 1.42, NVIDIA FLARE 2.9 and flwrmtls on the same FedAvg workload.

Run ``.venv/bin/python bench/bench_compare.py`` (``make bench`` runs it first); ``--quick`` for
one small cell (2 nodes x 1 MiB, 1 run each); ``--nodes``/``--model-mb``/``--repetitions``/
``--systems`` select; ``--setup-only`` only makes the other systems' virtualenvs; ``--plot
FILE`` draws the figure (with ``--from-json``, from a saved result).

The workload (bench/apps/*_fedavg, harness/workload.py): the server makes M MiB of random
float32 in 4 arrays and runs its system's own FedAvg over all N nodes for 3 rounds, no
evaluation; node K adds ``1 + K/1024`` to every element, so every reply differs from every
other; each server checks the model it ends with. Systems, each with a federation of its own
per cell, one after the other, all on 127.0.0.1 (harness/flower.py, harness/nvflare.py and
harness/flwrmtls_runs.py say exactly how each is set up):

* ``flower``: Flower 1.42.0 (TLS, ``--enable-supernode-auth``, registered keys), ``flwr run``;
* ``nvflare``: NVIDIA FLARE 2.9.0, a provisioned project (its default mTLS), its FedAvg
  recipe, the job submitted with its Flare API;
* ``mtls``: flwrmtls with client certificates and a CRL, ``flwrmtls run``;
* ``eckey``: flwrmtls with registered EC keys (Flower's mode);
* ``mtls-identical``: flwrmtls mTLS where every node adds 1 (identical replies): an extra,
  named column only; no ratio uses it.

Figures per run: wall (the run command, or FLARE's job from submission to completion), time
per round (the server's own stamps; rounds tile the strategy's run), peak RSS of the link's
process tree and of node 1's (every process of each: app and job processes included).
Table: median (min-max) over the runs; ratios are medians of one run of this script, another
system over flwrmtls mTLS. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import BenchError, progress
from harness.cli import Workspace, base_parser, finish, positive, positive_float, run_main
from harness.flower import FLWR_VERSION, ensure_flower_venv, measure_flower_cell
from harness.flwrmtls_runs import copy_app, issue_nodes, measure_fedavg_cell
from harness.nvflare import NVFLARE_VERSION, ensure_nvflare_venv, measure_nvflare_cell
from harness.plot import plot_compare
from harness.procs import sweep
from harness.results import envelope, load_json, loadavg, save_json
from harness.stats import ratio
from harness.tables import fmt_spread, markdown_table
from harness.workload import DEFAULT_ROUNDS

from flwrmtls.testing.pki import make_test_pki

SYSTEMS = ("flower", "nvflare", "mtls", "eckey", "mtls-identical")
DEFAULT_SYSTEMS = ("flower", "nvflare", "mtls", "eckey")
NAMES = {
    "flower": f"Flower {FLWR_VERSION}",
    "nvflare": f"NVIDIA FLARE {NVFLARE_VERSION}",
    "mtls": "flwrmtls mTLS",
    "eckey": "flwrmtls EC-key",
    "mtls-identical": "flwrmtls mTLS, identical replies",
}
BASELINE = "mtls"
COMPETITORS = ("flower", "nvflare")
FULL_CELLS = ((2, 1.0), (8, 1.0), (2, 50.0), (8, 50.0))
QUICK_CELLS = ((2, 1.0),)
DEFAULT_REPETITIONS = 3
FIGURES = (
    ("wall_seconds", "wall (s)", 2),
    ("round_mean_seconds", "per round (s)", 2),
    ("link_peak_rss_mib", "link tree RSS (MiB)", 0),
    ("node_peak_rss_mib", "node tree RSS (MiB)", 0),
)


def cells_of(args: argparse.Namespace) -> list[tuple[int, float]]:
    if args.nodes or args.model_mb:
        return [(n, m) for m in args.model_mb or [1.0] for n in args.nodes or [2]]
    return list(QUICK_CELLS if args.quick else FULL_CELLS)


def measure_system(
    system: str,
    cell: tuple[int, float],
    space: Workspace,
    context: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    nodes, model_mb = cell
    directory = space.path / f"{system}-{nodes}-{model_mb:g}"
    common = {
        "nodes": nodes,
        "model_mb": model_mb,
        "rounds": args.rounds,
        "repetitions": args.repetitions,
    }
    if system == "flower":
        return measure_flower_cell(
            context["flower"], context["pki"], directory, space.env, context["flower_app"],
            distinct=True, stagger=args.stagger, **common,
        )  # fmt: skip
    if system == "nvflare":
        return measure_nvflare_cell(
            context["nvflare"], directory, space.env, context["nvflare_app"], distinct=True,
            **common,
        )  # fmt: skip
    mode = "eckey" if system == "eckey" else "mtls"
    return measure_fedavg_cell(
        context["pki"], directory, space.env, context["flwrmtls_app"], mode=mode,
        distinct=system != "mtls-identical", stagger=args.stagger, **common,
    )  # fmt: skip


def cell_ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each competitor's median over flwrmtls mTLS's, per figure (within this run)."""
    base = systems.get(BASELINE, {}).get("summary")
    found = {}
    for name in COMPETITORS:
        other = systems.get(name, {}).get("summary")
        if other is not None and base is not None:
            found[name] = {metric: ratio(other[metric], base[metric]) for metric, _, _ in FIGURES}
    return found


def measure_compare(args: argparse.Namespace, space: Workspace) -> dict[str, Any]:
    systems = [s for s in SYSTEMS if s in args.systems]
    cells = cells_of(args)
    pki = make_test_pki(space.path / "pki")
    issue_nodes(pki, max(n for n, _ in cells))
    context: dict[str, Any] = {
        "pki": pki,
        "flwrmtls_app": copy_app("flwrmtls_fedavg", space.path / "apps" / "flwrmtls"),
    }
    versions = {}
    if "flower" in systems:
        context["flower"] = ensure_flower_venv()
        context["flower_app"] = copy_app("flower_fedavg", space.path / "apps" / "flower")
        versions["flower"] = FLWR_VERSION
    if "nvflare" in systems:
        context["nvflare"] = ensure_nvflare_venv()
        context["nvflare_app"] = copy_app("nvflare_fedavg", space.path / "apps" / "nvflare")
        versions["nvflare"] = NVFLARE_VERSION
    config = {
        "systems": systems,
        "rounds": args.rounds,
        "repetitions": args.repetitions,
        "stagger_seconds": args.stagger,
        "quick": args.quick,
        "versions": versions,
    }
    result = {**envelope("bench_compare", config), "cells": [], "complete": False}
    for nodes, model_mb in cells:
        before = loadavg()
        measured: dict[str, dict[str, Any]] = {}
        for system in systems:
            try:
                measured[system] = measure_system(system, (nodes, model_mb), space, context, args)
            except BenchError as error:
                progress(f"{system}: {error}")
                measured[system] = {"error": str(error)}
            finally:
                sweep(space.tag)
        result["cells"].append(
            {
                "nodes": nodes,
                "model_mb": model_mb,
                "systems": measured,
                "ratios": cell_ratios(measured),
                "loadavg_before": before,
                "loadavg_after": loadavg(),
            }
        )
        if args.save is not None:
            save_json(args.save, result)
    result["complete"] = True
    result["failed"] = any("error" in s for c in result["cells"] for s in c["systems"].values())
    return result


def render_compare(result: dict[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    systems: list[str] = config["systems"]
    competitors = [s for s in COMPETITORS if s in systems and BASELINE in systems]
    header = ["nodes", "MiB", "figure", *(NAMES[s] for s in systems)]
    header += [f"{NAMES[s].rsplit(' ', 1)[0]} / mTLS" for s in competitors]
    rows = []
    for cell in result["cells"]:
        for metric, label, digits in FIGURES:
            row = [str(cell["nodes"]), f"{cell['model_mb']:g}", label]
            for system in systems:
                data = cell["systems"].get(system, {})
                if "summary" in data:
                    row.append(fmt_spread(data["summary"][metric], digits, runs=len(data["runs"])))
                else:
                    row.append("failed" if "error" in data else "-")
            for system in competitors:
                value = cell["ratios"].get(system, {}).get(metric)
                row.append("-" if value is None else f"{value:.1f}x")
            rows.append(row)
    lines = [
        f"Side by side: the same FedAvg workload ({config['rounds']} rounds, all N nodes, M MiB "
        "of float32 in 4 arrays, node K adds 1 + K/1024: distinct updates)",
        f"  {result['date']}, flwrmtls {machine['flwrmtls']} at {result['revision']}, Python "
        f"{machine['python']}, {machine['cpus_usable']} CPUs usable, {machine['memory_gib']} "
        f"GiB; load average at the start {result['loadavg_start']:.2f}",
        f"  {config['repetitions']} run(s) per system and cell: median (min-max); ratios: "
        "medians of this run, the other system over flwrmtls mTLS; RSS: every process of the "
        "link (server) and of node 1 (client 1)",
        "",
        *markdown_table(header, rows, left=3),
        "",
    ]
    for cell in result["cells"]:
        notes = []
        for system in systems:
            data = cell["systems"].get(system, {})
            if "startup_seconds" in data:
                notes.append(f"{NAMES[system]} {data['startup_seconds']:.1f} s")
        lines.append(
            f"  {cell['nodes']} x {cell['model_mb']:g} MiB: start-up until all online (not "
            f"timed): {', '.join(notes)}; load {cell['loadavg_before']:.2f} -> "
            f"{cell['loadavg_after']:.2f}"
        )
        for system in systems:
            data = cell["systems"].get(system, {})
            if "error" in data:
                lines.append(f"    {NAMES[system]} failed: {data['error'].splitlines()[0][:300]}")
            if data.get("failed_runs"):
                lines.append(
                    f"    {NAMES[system]}: {len(data['failed_runs'])} run(s) failed and were "
                    f"left out (first: {data['failed_runs'][0].splitlines()[0][:200]})"
                )
            if data.get("supernode_restarts"):
                lines.append(
                    f"    {NAMES[system]}: {len(data['supernode_restarts'])} SuperNode(s) exited "
                    "during start-up and were started again"
                )
    if not result.get("complete", True):
        lines.append("  (incomplete: the run stopped before its last cell)")
    if "elapsed_seconds" in result:
        lines.append(f"  total time {result['elapsed_seconds']:.0f} s")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument(
        "--repetitions",
        type=positive,
        help=f"runs per system and cell (default {DEFAULT_REPETITIONS}; 1 with --quick)",
    )
    p.add_argument("--nodes", type=positive, nargs="+", help="node counts (default 2 8)")
    p.add_argument("--model-mb", type=positive_float, nargs="+", help="MiB (default 1 50)")
    p.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(DEFAULT_SYSTEMS),
        help=f"which systems (default: {' '.join(DEFAULT_SYSTEMS)})",
    )
    p.add_argument("--rounds", type=positive, default=DEFAULT_ROUNDS, help="FedAvg rounds")
    p.add_argument("--stagger", type=float, default=0.2, help="seconds between node starts")
    p.add_argument("--plot", type=Path, help="also draw the figure into this PNG file")
    p.add_argument(
        "--setup-only", action="store_true", help="only make the other systems' virtualenvs"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.setup_only:
        ensure_flower_venv()
        ensure_nvflare_venv()
        return 0
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else DEFAULT_REPETITIONS
    status = finish(
        "bench_compare", args, lambda space: measure_compare(args, space), render_compare
    )
    if args.plot is not None:
        source = args.from_json or args.save
        if source is None:
            progress("bench_compare: --plot needs --save or --from-json")
            return 1
        plot_compare(load_json(source), NAMES, args.plot)
        progress(f"figure written to {args.plot}")
    return status


if __name__ == "__main__":
    run_main(main)
