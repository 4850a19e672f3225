"""How soon a revoked (or unregistered) idle node is out: from the change to the node's exit.

Run ``.venv/bin/python bench/bench_revocation.py`` (``--json`` for JSON). A real link runs as a
subprocess on 127.0.0.1 with the test PKI (the built-in CA) and ``--heartbeat-interval 60``, so
nothing but the link's own reaction can end a node early. For each trial a node (a real
``flwrmtls-supernode`` process with its own certificate) activates and sits idle in its long
poll; after a random pause (0 to 3 s, so the change lands anywhere in the link's 1 s file poll
and in the node's 20 s long poll), either

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
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import LinkProcess, NodeProcess, run_cli


@dataclass(frozen=True)
class Trial:
    mode: str
    pause: float
    """Seconds the node sat idle (activated, in its long poll) before the change."""
    seconds_to_exit: float
    exit_code: int
    reason_seen: bool


def _link(pki: TestPki, directory: Path, env: dict[str, str]) -> LinkProcess:
    chain, key = pki.paths("server")
    link = LinkProcess(
        [
            "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
            "--serverappio-api-address", "127.0.0.1:0", "--database", str(directory / "link.db"),
            "--ssl-require-client-auth", "--ssl-ca-certfile", str(pki.trust_bundle_path),
            "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
            "--ssl-crl-file", str(pki.crl_path), "--heartbeat-interval", "60",
        ],
        directory / "link.log", env,
    )  # fmt: skip
    link.start_and_wait()
    return link


def _node(pki: TestPki, name: str, port: int, directory: Path, env: dict[str, str]) -> NodeProcess:
    chain, key = pki.paths(name)
    node = NodeProcess(
        [
            "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(pki.trust_bundle_path),
            "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key),
            "--clientappio-api-address", "127.0.0.1:0",
        ],
        directory / f"{name}.log", env,
    )  # fmt: skip
    node.start()
    return node


def _wait_exit(node: NodeProcess, timeout: float) -> tuple[float, int]:
    assert node.process is not None
    start = time.monotonic()
    while node.process.poll() is None and time.monotonic() - start < timeout:
        time.sleep(0.005)
    code = node.process.poll()
    return time.monotonic(), -1 if code is None else code


def run(trials: int, modes: list[str], seed: int) -> list[Trial]:
    rng = random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-revocation-") as temp:
        directory = Path(temp)
        env = {"FLWRMTLS_HOME": str(directory / "home")}
        pki = make_test_pki(directory / "pki")
        link = _link(pki, directory, env)
        chain, key = pki.paths("cli-operator")
        run_cli(
            ["config", "add", "bench", "--address", f"127.0.0.1:{link.control_port}",
             "--root-certificates", str(pki.trust_bundle_path), "--client-certificate",
             str(chain), "--client-private-key", str(key), "--default"],
            env=env,
        )  # fmt: skip
        steady = _node(pki, "node-1", link.fleet_port, directory, env)
        steady.wait_active()
        try:
            for index in range(trials):
                for mode in modes:
                    name = f"bench-{mode}-{index}"
                    pki.ca.issue_node(name, organization="Bench")
                    node = _node(pki, name, link.fleet_port, directory, env)
                    node_id = node.wait_active()
                    pause = rng.uniform(0.0, 3.0)
                    time.sleep(pause)
                    if mode == "crl":
                        pki.ca.revoke(certificate_file=pki.paths(name)[0])
                        changed = time.monotonic()
                    else:
                        changed = time.monotonic()
                        done = run_cli(["supernode", "unregister", str(node_id)], env=env)
                        if done.returncode != 0:
                            raise RuntimeError(done.stderr)
                    exited, code = _wait_exit(node, timeout=90.0)
                    reason = "certificate revoked" if mode == "crl" else "node unregistered"
                    results.append(
                        Trial(mode, round(pause, 3), round(exited - changed, 3), code,
                              reason in node.log)
                    )  # fmt: skip
                    node.stop()
            assert steady.process is not None
            if steady.process.poll() is not None:
                raise RuntimeError("the node that stayed good exited:\n" + steady.log[-2000:])
        finally:
            steady.stop()
            link.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per mode")
    parser.add_argument(
        "--mode", choices=["crl", "unregister", "both"], default="both", help="what ends a node"
    )
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    modes = ["crl", "unregister"] if args.mode == "both" else [args.mode]
    trials = run(args.trials, modes, args.seed)
    summary = {}
    for mode in modes:
        seconds = [t.seconds_to_exit for t in trials if t.mode == mode]
        summary[mode] = {
            "trials": len(seconds),
            "min_s": min(seconds),
            "median_s": statistics.median(seconds),
            "max_s": max(seconds),
            "all_exited_non_zero_with_reason": all(
                t.exit_code not in (0, -1) and t.reason_seen for t in trials if t.mode == mode
            ),
        }
    if args.json:
        print(json.dumps({"summary": summary, "trials": [asdict(t) for t in trials]}, indent=2))
        return
    print("idle node (heartbeat every 60 s) out after its credentials end, real processes")
    print(f"{'what ends it':<14}{'trials':>7}{'min s':>8}{'median s':>10}{'max s':>8}  reason")
    for mode, row in summary.items():
        what = "CRL change" if mode == "crl" else "unregister"
        print(
            f"{what:<14}{row['trials']:>7}{row['min_s']:>8.2f}{row['median_s']:>10.2f}"
            f"{row['max_s']:>8.2f}  {'named' if row['all_exited_non_zero_with_reason'] else '?'}"
        )


if __name__ == "__main__":
    main()
