"""How soon a revoked (or unregistered) idle node is out: from the change to the node's exit.

Run ``.venv/bin/python bench/bench_revocation.py`` (``--json`` for JSON, ``--quick`` for one
trial per mode). A real link runs as a subprocess on 127.0.0.1 with the test PKI (the built-in
CA) and ``--heartbeat-interval 60``, so nothing but the link's own reaction can end a node
early. For each trial a node (a real ``flwrmtls-supernode`` process with its own certificate)
activates and sits idle in its long poll; after a random pause (0 to 3 s, so the change lands
anywhere in the link's 1 s file poll and in the node's 20 s long poll), either

* ``crl``: the CA revokes its certificate and rewrites the CRL file the link watches; the
  clock starts when the new file is in place;
* ``unregister``: ``flwrmtls supernode unregister NODE_ID`` runs; the clock starts when the
  command is started (so it includes the CLI's own start-up, about half a second);

and the clock stops when the node process has exited (non-zero, with the link's reason). A
second node that stays good runs throughout (it must still be running at the end).

It only prints figures; nothing here asserts on timings. See docs/security-model.md.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import BenchError
from harness.cli import Workspace, base_parser, finish, positive, run_main
from harness.results import envelope
from harness.stats import spread
from harness.tables import markdown_table

from flwrmtls.testing.federation import add_profile, link_args, node_args
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import LinkProcess, NodeProcess, run_cli

MODES = ("crl", "unregister")
DEFAULT_TRIALS = 5


@dataclass(frozen=True)
class Trial:
    mode: str
    pause: float
    """Seconds the node sat idle (activated, in its long poll) before the change."""
    seconds_to_exit: float
    exit_code: int
    reason_seen: bool


def _node(
    pki: TestPki, name: str, port: int, directory: Path, env: Mapping[str, str]
) -> NodeProcess:
    node = NodeProcess(node_args(pki, port, cert=name), directory / f"{name}.log", dict(env))
    node.start()
    return node


def _wait_exit(node: NodeProcess, timeout: float) -> tuple[float, int]:
    assert node.process is not None
    start = time.monotonic()
    while node.process.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.005)
    code = node.process.poll()
    return time.monotonic(), -1 if code is None else code


def trial(
    pki: TestPki, link: LinkProcess, mode: str, name: str, pause: float, space: Workspace
) -> Trial:
    pki.ca.issue_node(name, organization="Bench")
    node = _node(pki, name, link.fleet_port, space.path, space.env)
    try:
        node_id = node.wait_active()
        time.sleep(pause)
        if mode == "crl":
            pki.ca.revoke(certificate_file=pki.paths(name)[0])
            changed = time.monotonic()
        else:
            changed = time.monotonic()
            done = run_cli(["supernode", "unregister", str(node_id)], env=space.env)
            if done.returncode != 0:
                raise BenchError(f"supernode unregister failed: {done.stderr.strip()}")
        exited, code = _wait_exit(node, timeout=90.0)
    finally:
        node.stop()
    reason = "certificate revoked" if mode == "crl" else "node unregistered"
    return Trial(mode, round(pause, 3), round(exited - changed, 3), code, reason in node.log)


def measure_revocation(args: argparse.Namespace, space: Workspace) -> dict[str, Any]:
    modes = list(MODES) if args.mode == "both" else [args.mode]
    rng = random.Random(args.seed)
    pki = make_test_pki(space.path / "pki")
    config = {"trials": args.trials, "modes": modes, "seed": args.seed}
    link = LinkProcess(
        link_args(pki, space.path / "link.db", heartbeat_interval=60),
        space.path / "link.log",
        space.env,
    )
    trials: list[Trial] = []
    link.start_and_wait()
    try:
        add_profile(pki, link.control_port, space.env, name="bench")
        steady = _node(pki, "node-1", link.fleet_port, space.path, space.env)
        try:
            steady.wait_active()
            for index in range(args.trials):
                for mode in modes:
                    pause = rng.uniform(0.0, 3.0)
                    trials.append(trial(pki, link, mode, f"bench-{mode}-{index}", pause, space))
            assert steady.process is not None
            if steady.process.poll() is not None:
                raise BenchError("the node that stayed good exited:\n" + steady.log[-2000:])
        finally:
            steady.stop()
    except (RuntimeError, TimeoutError) as error:
        raise BenchError(f"{error}\n{link.log[-3000:]}") from None
    finally:
        link.stop()
    summary = {}
    for mode in modes:
        mine = [t for t in trials if t.mode == mode]
        summary[mode] = {
            "trials": len(mine),
            **spread([t.seconds_to_exit for t in mine]),
            "all_exited_non_zero_with_reason": all(
                t.exit_code not in (0, -1) and t.reason_seen for t in mine
            ),
        }
    return {
        **envelope("bench_revocation", config),
        "summary": summary,
        "trials": [asdict(t) for t in trials],
    }


def render_revocation(result: dict[str, Any]) -> str:
    rows = [
        [
            "CRL change" if mode == "crl" else "unregister",
            str(row["trials"]),
            f"{row['min']:.2f}",
            f"{row['median']:.2f}",
            f"{row['max']:.2f}",
            "named" if row["all_exited_non_zero_with_reason"] else "?",
        ]
        for mode, row in result["summary"].items()
    ]
    return "\n".join(
        [
            "Idle node (heartbeat every 60 s) out after its credentials end, real processes",
            f"  {result['date']}, flwrmtls at {result['revision']}; load average at the start "
            f"{result['loadavg_start']:.2f}",
            "",
            *markdown_table(
                ["what ends it", "trials", "min s", "median s", "max s", "reason"], rows, left=1
            ),
        ]
    )


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__)
    p.add_argument("--trials", type=positive, help=f"trials per mode (default {DEFAULT_TRIALS})")
    p.add_argument("--mode", choices=[*MODES, "both"], default="both", help="what ends a node")
    p.add_argument("--seed", type=int, default=10, help="for the random pauses")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.trials is None:
        args.trials = 1 if args.quick else DEFAULT_TRIALS
    return finish(
        "bench_revocation", args, lambda space: measure_revocation(args, space), render_revocation
    )


if __name__ == "__main__":
    run_main(main)
