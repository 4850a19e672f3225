"""A link that crashes is not a link that refuses: real processes, the link killed with SIGKILL.

A link that dies mid-connection (OOM kill, host loss, eviction) closes its connections with the
words grpc also uses for a certificate refused at the handshake. Nodes must survive it and come
back with their node ids when the link restarts; a CLI following a run says the link went away;
the restarted link shows no node online until it calls again. Beside these, the refusals that
are real still end a node: a certificate that expired (at once, named), revoked (at once, the
link's reason), from a CA the link does not trust (within --max-retries, both possibilities
named, because nothing tells it apart from a restarting link).
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.testing.processes import LinkProcess, ManagedProcess, NodeProcess

from .deployment import Deployment, free_port
from .probe_app import write_probe_app

RECONNECT_TIMEOUT = 120.0
"""Generous: node backoff (1, 2, 4 s ...) plus a link start, on a loaded machine."""


def one_error_line(output: str) -> str:
    assert "Traceback" not in output
    lines = [line for line in output.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, output
    return lines[0]


def fixed_ports(deployment: Deployment, *, heartbeat: str = "1") -> tuple[list[str], int, int]:
    """Link flags on ports that a restarted link can bind again; (args, fleet, control)."""
    fleet, control = free_port(), free_port()
    args = deployment.link_args(f"127.0.0.1:{fleet}", f"127.0.0.1:{control}")
    args[args.index("--heartbeat-interval") + 1] = heartbeat
    return args, fleet, control


def kill(process: ManagedProcess) -> None:
    assert process.process is not None
    process.process.send_signal(signal.SIGKILL)
    process.wait_exit()


def alive(process: ManagedProcess) -> bool:
    return process.process is not None and process.process.poll() is None


def statuses(deployment: Deployment) -> dict[int, str]:
    return {int(str(n["node_id"])): str(n["status"]) for n in deployment.list_nodes()}


def back_with_the_same_id(node: NodeProcess, node_id: int) -> None:
    node.wait_for(rf"link reachable again.*\n.*node active: node id {node_id}\b", RECONNECT_TIMEOUT)


def test_nodes_survive_a_killed_link_and_come_back_with_their_node_ids(
    deployment: Deployment,
) -> None:
    args, fleet, control = fixed_ports(deployment)
    link = deployment.start_link(args)
    nodes = [deployment.node(name, fleet) for name in ("node-1", "node-2")]
    ids = [node.wait_active() for node in nodes]
    deployment.profile(control)
    assert statuses(deployment) == dict.fromkeys(ids, "online")
    kill(link)
    for node in nodes:
        node.wait_for("retrying in")  # raises if the node exited instead
    deployment.start_link(args, name="link-2")
    for node, node_id in zip(nodes, ids, strict=True):
        back_with_the_same_id(node, node_id)
    assert statuses(deployment) == dict.fromkeys(ids, "online")  # the `supernode list` ids
    for node in nodes:
        assert alive(node)
        assert "error:" not in node.log
        assert "may have refused" not in node.log


def test_a_streamed_run_cut_by_a_killed_link_says_the_link_went_away(
    deployment: Deployment, tmp_path: Path
) -> None:
    args, fleet, control = fixed_ports(deployment)
    link = deployment.start_link(args)
    nodes = [deployment.node(name, fleet) for name in ("node-1", "node-2")]
    ids = [node.wait_active() for node in nodes]
    deployment.profile(control)
    app = write_probe_app(tmp_path / "app")
    streaming = deployment.cli_process(
        "run", str(app), "--stream", "--run-config", "sleep-on=all sleep-seconds=60 rounds=1"
    )
    streaming.wait_for(r"link: run 1: probe 0\.1\.0 started by", 60)  # the stream is open
    for node in nodes:
        node.wait_for(r"run 1: ClientApp process \d+ started", 60)
    kill(link)
    assert streaming.wait_exit(60) == 1
    line = one_error_line(streaming.log)
    assert line.startswith(f"flwrmtls: error: the link at 127.0.0.1:{control} went away"), line
    assert "`flwrmtls log 1 --stream`" in line
    assert "refused" not in line
    assert "certificate" not in line
    for node in nodes:
        node.wait_for("retrying in")
    deployment.start_link(args, name="link-2")
    for node, node_id in zip(nodes, ids, strict=True):
        back_with_the_same_id(node, node_id)
    logs = deployment.cli("log", "1")
    assert logs.returncode == 0, logs.stderr
    assert "run 1 failed: link restarted while the run was active" in logs.stdout
    listed = deployment.cli("ls", "--format", "json")
    [run] = json.loads(listed.stdout)
    assert (run["status"], run["reason"]) == ("failed", "link restarted while the run was active")
    assert all(alive(node) for node in nodes)


def test_a_link_restarted_after_a_crash_shows_nodes_that_died_with_it_offline(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Heartbeats every 30 s: when the link crashed, its database promised both nodes online
    # for another 75 s. Both nodes died with it (SIGKILL: no goodbye).
    args, fleet, control = fixed_ports(deployment, heartbeat="30")
    link = deployment.start_link(args)
    nodes = [deployment.node(name, fleet) for name in ("node-1", "node-2")]
    ids = [node.wait_active() for node in nodes]
    deployment.profile(control)
    assert statuses(deployment) == dict.fromkeys(ids, "online")
    for process in (*nodes, link):
        kill(process)
    deployment.start_link(args, name="link-2")
    assert statuses(deployment) == dict.fromkeys(ids, "offline")
    # A run does not count them either: it waits for nodes, and gives up.
    app = write_probe_app(tmp_path / "app")
    waited = deployment.cli(
        "run", str(app), "--stream",
        "--run-config", "min-available=1 min-train=1 wait-timeout=2 rounds=1",
    )  # fmt: skip
    assert waited.returncode == 1
    assert "not enough nodes to train" in waited.stdout + waited.stderr
    # Control: a node that comes back is online again, with its node id; the other is not.
    again = deployment.node("node-1-again", fleet, cert="node-1")
    assert again.wait_active() == ids[0]
    assert statuses(deployment) == {ids[0]: "online", ids[1]: "offline"}


def test_real_refusals_still_end_a_node_beside_one_that_keeps_serving(
    deployment: Deployment, tmp_path: Path
) -> None:
    ca = deployment.pki.ca
    now = datetime.now(UTC)
    ca.issue_node("expired", organization="Hospital A", options=LeafOptions(
        not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)))  # fmt: skip
    ca.issue_node("node-3", organization="Clinic C")
    ca.revoke(certificate_file=deployment.pki.paths("node-3")[0])
    stranger = CertificateAuthority.create(tmp_path / "stranger").issue_node("node-4")
    link: LinkProcess = deployment.start_link()
    good = deployment.node("node-1", link.fleet_port)
    good.wait_active()
    bounded = ("--max-retries", "2")
    expired = deployment.node("expired", link.fleet_port, *bounded)
    revoked = deployment.node("node-3", link.fleet_port, *bounded)
    foreign = deployment.node(
        "stranger", link.fleet_port, *bounded, "--ssl-client-certfile", str(stranger.chain_path),
        "--ssl-client-keyfile", str(stranger.key_path), cert="",
    )  # fmt: skip
    # Expired: at once, named (the node's own check).
    assert expired.wait_exit() == 1
    assert "--ssl-client-certfile: certificate expired on" in one_error_line(expired.log)
    # Revoked: at once, with the link's reason.
    assert revoked.wait_exit() == 1
    assert "refused this client: certificate revoked" in one_error_line(revoked.log)
    # Another CA: the link closes the handshake, as a dying link would: retried within the
    # bound, then both possibilities and the node's own finding.
    assert foreign.wait_exit(60) == 1
    line = one_error_line(foreign.log)
    assert "gave up after 3 attempt(s)" in line
    assert "closed the connection during the handshake: it may have refused this certificate, " \
        "or be restarting" in line  # fmt: skip
    assert "does not chain to a CA in --root-certificates" in line
    assert foreign.log.count("retrying in") == 2
    for ended in (expired, revoked):
        assert "retrying in" not in ended.log
    assert alive(good)
    deployment.profile(link.control_port)
    assert statuses(deployment) == {good.wait_active(): "online"}
    # The CLI does not retry: a first handshake the link closes names both possibilities, and
    # what the CLI found about its own certificate.
    added = deployment.cli(
        "config", "add", "stranger", "--address", f"127.0.0.1:{link.control_port}",
        "--root-certificates", str(deployment.pki.trust_bundle_path),
        "--client-certificate", str(stranger.chain_path),
        "--client-private-key", str(stranger.key_path),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    refused = deployment.cli("supernode", "list", "stranger")
    assert refused.returncode == 1
    line = one_error_line(refused.stderr)
    assert "it may have refused this certificate, or be restarting" in line
    assert "does not chain to a CA in root-certificates (profile 'stranger'" in line
