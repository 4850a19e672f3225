"""``make demo``: a real federation with mTLS on this machine, narrated step by step.

1. The built-in CA makes a root and an issuing CA, a server certificate, three node
   certificates and an operator's CLI certificate; node-3's certificate is then revoked.
2. The link starts with --ssl-require-client-auth and the CRL.
3. node-1 (Hospital A) and node-2 (Hospital B) join: no registration, only their certificates,
   each with its data partition in --node-config.
4. The operator lists the nodes through a config.toml profile holding its certificate.
5. `flwrmtls new` writes the template app; `flwrmtls run --stream` trains it with FedAvg for 3
   rounds across both nodes; the loss must fall and the accuracy rise.
6. node-3, whose certificate is revoked, is refused with one clear line.
7. Everything shuts down cleanly; the demo exits 0 only if every step did what it should.

All files live under .demo/ (recreated each run); nothing touches ~/.flwrmtls.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from flwrmtls.testing.processes import LinkProcess, ManagedProcess, NodeProcess, run_cli

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
CERTS = WORK / "certs"
ENV = {"FLWRMTLS_HOME": str(WORK / "home")}


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def cli(*args: str, expect_ok: bool = True) -> str:
    print("$ flwrmtls " + " ".join(args), flush=True)
    result = run_cli(list(args), env=ENV, cwd=WORK)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if expect_ok and result.returncode != 0:
        raise DemoFailed(f"`flwrmtls {' '.join(args)}` failed")
    return result.stdout


_ROUND = re.compile(r"round (\d+)/\d+: .*evaluate loss ([0-9.]+), accuracy ([0-9.]+)")


def node(name: str, fleet_port: int, node_config: str = "") -> NodeProcess:
    args = [
        "--superlink", f"127.0.0.1:{fleet_port}",
        "--root-certificates", str(CERTS / "ca.crt"),
        "--ssl-client-certfile", str(CERTS / f"{name}.pem"),
        "--ssl-client-keyfile", str(CERTS / f"{name}.key"),
        "--clientappio-api-address", "127.0.0.1:0",
    ]  # fmt: skip
    if node_config:
        args += ["--node-config", node_config]
    shown = f" --node-config '{node_config}'" if node_config else ""
    print(f"$ flwrmtls-supernode --ssl-client-certfile certs/{name}.pem{shown} ...", flush=True)
    process = NodeProcess(args, WORK / "logs" / f"{name}.log", ENV)
    process.start()
    return process


def run(processes: list[ManagedProcess]) -> None:
    step("1. A CA, a server certificate, three node certificates, an operator certificate")
    cli("ca", "init", "--dir", "certs", "--name", "Demo Federation")
    cli("ca", "issue", "server", "server", "--dir", "certs", "--dns", "localhost", "--ip",
        "127.0.0.1")  # fmt: skip
    cli("ca", "issue", "node", "node-1", "--dir", "certs", "--org", "Hospital A")
    cli("ca", "issue", "node", "node-2", "--dir", "certs", "--org", "Hospital B")
    cli("ca", "issue", "node", "node-3", "--dir", "certs", "--org", "Clinic C")
    cli("ca", "issue", "cli", "admin", "--dir", "certs", "--role", "operator")
    cli("ca", "revoke", "certs/node-3.pem", "--dir", "certs", "--reason", "keyCompromise")
    cli("ca", "show", "certs/node-1.pem")

    step("2. The link, requiring client certificates")
    link_args = [
        "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
        "--ssl-require-client-auth", "--ssl-ca-certfile", str(CERTS / "ca.crt"),
        "--ssl-certfile", str(CERTS / "server.pem"), "--ssl-keyfile", str(CERTS / "server.key"),
        "--ssl-crl-file", str(CERTS / "crl.pem"), "--database", str(WORK / "link.db"),
        "--heartbeat-interval", "2", "--serverappio-api-address", "127.0.0.1:0",
    ]  # fmt: skip
    print("$ flwrmtls-superlink --ssl-require-client-auth --ssl-ca-certfile certs/ca.crt "
          "--ssl-certfile certs/server.pem --ssl-keyfile certs/server.key "
          "--ssl-crl-file certs/crl.pem --database .demo/link.db ...", flush=True)  # fmt: skip
    link = LinkProcess(link_args, WORK / "logs" / "link.log", ENV)
    processes.append(link)
    link.start_and_wait()
    print(f"  link up: Fleet API on port {link.fleet_port}, Control API on port "
          f"{link.control_port}", flush=True)  # fmt: skip

    step("3. Two nodes join with their certificates (no registration step)")
    good = [
        node("node-1", link.fleet_port, "partition-id=0 num-partitions=2"),
        node("node-2", link.fleet_port, "partition-id=1 num-partitions=2"),
    ]
    processes.extend(good)
    for process in good:
        print(f"  node active, node id {process.wait_active()}", flush=True)

    step("4. The operator lists the nodes through a config.toml profile")
    cli("config", "add", "demo", "--address", f"127.0.0.1:{link.control_port}",
        "--root-certificates", "certs/ca.crt", "--client-certificate", "certs/admin.pem",
        "--client-private-key", "certs/admin.key", "--default")  # fmt: skip
    cli("supernode", "list")
    nodes = json.loads(cli("supernode", "list", "--format", "json"))
    online = sorted(n["identity"] for n in nodes if n["status"] == "online")
    if online != ["CN=node-1,O=Hospital A", "CN=node-2,O=Hospital B"]:
        raise DemoFailed(f"expected node-1 and node-2 online, the link lists {online}")

    step("5. A federated training run across both nodes")
    cli("new", "app")
    output = cli("run", "app", "demo", "--stream")
    rounds = [
        (int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in _ROUND.finditer(output)
    ]
    if len(rounds) < 3:
        raise DemoFailed(f"expected 3 rounds of evaluation metrics, got {len(rounds)}")
    losses = [loss for _, loss, _ in rounds]
    accuracies = [accuracy for _, _, accuracy in rounds]
    print(f"  loss by round {losses}, accuracy by round {accuracies}", flush=True)
    if not losses[-1] < losses[0] or not accuracies[-1] > accuracies[0]:
        raise DemoFailed("the model did not improve: loss must fall and accuracy rise")
    cli("ls")

    step("6. node-3, whose certificate was revoked, tries to join")
    revoked = node("node-3", link.fleet_port)
    processes.append(revoked)
    code = revoked.wait_exit(timeout=60)
    print("  " + revoked.log.strip().splitlines()[-1], flush=True)
    if code == 0 or "certificate revoked" not in revoked.log:
        raise DemoFailed("node-3 was not refused for its revoked certificate")
    refusal = link.wait_for(r".*refused .*revoked.*")
    print("  link log: " + refusal.group(0).strip(), flush=True)

    step("7. Shutting down")
    stoppable: list[ManagedProcess] = [*good, link]
    for managed in stoppable:
        name = managed.log_path.stem
        code = managed.stop()
        print(f"  {name} stopped (exit {code})", flush=True)
        if code != 0:
            raise DemoFailed(f"{name} did not stop cleanly (exit {code})")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    processes: list[ManagedProcess] = []
    try:
        run(processes)
    except (DemoFailed, RuntimeError, TimeoutError) as error:
        print(f"\ndemo FAILED: {error}\nlogs are in {WORK / 'logs'}", file=sys.stderr)
        return 1
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.stop()
    print(
        "\ndemo OK: two nodes admitted by certificate trained a model together over mTLS; "
        "the revoked one was refused."
    )
    print(f"logs: {WORK / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
