"""Several links, one federation: two link processes on one PostgreSQL database, one object
directory, haproxy in TCP mode in front (mTLS end to end: the balancer holds no key).

Each test is an operator's day: a FedAvg run through the balancer; one replica SIGKILLed in the
middle of a run (what a lost host does); an unregistration and a revocation reaching nodes
connected to either replica. The controls: the same calls succeeding before the change.
"""

from __future__ import annotations

import re
from pathlib import Path

from flwrmtls.pki import RevocationReason
from flwrmtls.state.replicas import LOST_REASON, RENEW_EVERY, REPLICA_TTL

from .deployment import Deployment
from .probe_app import write_probe_app
from .several import SeveralLinks, wait_for
from .test_processes import one_error_line


def test_a_federation_behind_haproxy_survives_losing_the_replica_that_runs_its_serverapp(
    deployment: Deployment, postgres_url: str, tmp_path: Path
) -> None:
    several = SeveralLinks(deployment, postgres_url)
    try:
        nodes = [
            deployment.node(name, several.fleet_port, "--node-config", f'name="{name}"')
            for name in ("node-1", "node-2")
        ]
        for node in nodes:
            node.wait_active()
        app = write_probe_app(tmp_path / "app")
        first = deployment.cli("run", str(app), "--stream", timeout=180)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "final model sum" in first.stdout
        # A run that stays in its first round (its ClientApps sleep), then its replica dies.
        started = deployment.cli(
            "run", str(app), "--run-config", "sleep-on=all sleep-seconds=600 rounds=1"
        )
        assert started.returncode == 0, started.stderr
        holder = several.holder(2)
        survivor = next(link for link in several.links if link is not holder)
        wait_for(lambda: {r["run_id"]: r["status"] for r in several.runs()}.get(2) == "running",
                 "run 2 running")  # fmt: skip
        assert holder.process is not None
        holder.process.kill()  # SIGKILL: no cleanup, no goodbye
        holder.process.wait()
        # The run ends, recorded, within the lease's bound; the CLI reaches the survivor.
        bound = REPLICA_TTL + 2 * RENEW_EVERY + 10
        wait_for(
            lambda: (
                {r["run_id"]: (r["status"], r["reason"]) for r in several.runs()}.get(2)
                == ("failed", LOST_REASON)
            ),
            "run 2 failed: link replica lost",
            timeout=bound,
        )
        survivor.wait_for(r"run 2: the link process running its ServerApp is lost")
        # Nothing already accepted is lost: run 1 with its result and logs.
        [done] = [r for r in several.runs() if r["run_id"] == 1]
        assert done["status"] == "completed"
        assert done["result"]
        logs = deployment.cli("log", "1")
        assert "final model sum" in logs.stdout
        # The nodes reconnect through the balancer and a new run completes on the survivor.
        wait_for(lambda: [str(n["status"]) for n in deployment.list_nodes()]
                 == ["online", "online"], "both nodes online again")  # fmt: skip
        third = deployment.cli("run", str(app), "--run-config", "rounds=1", "--stream",
                               timeout=180)  # fmt: skip
        assert third.returncode == 0, third.stdout + third.stderr
        assert several.holder(3) is survivor
        assert all(node.process is not None and node.process.poll() is None for node in nodes)
    finally:
        several.stop()


def test_unregistering_and_revoking_reach_nodes_on_either_replica(
    deployment: Deployment, postgres_url: str
) -> None:
    """node-1 talks to replica 0 and node-2 to replica 1 (each directly, to know which).
    node-1 is unregistered through replica 1's Control API (the replica it does not talk
    to), node-2's certificate is revoked (the CRL file each replica re-reads); each node ends
    within the bound the one-link tests give (30 s), as on one link. node-3 (the control,
    through the balancer) works on, and the CLI's listing through the balancer reaches both
    replicas."""
    deployment.pki.ca.issue_node("node-3", organization="Clinic C")
    several = SeveralLinks(deployment, postgres_url)
    try:
        first, second = several.links
        deployment.profile(second.control_port, name="replica-1")
        node_1 = deployment.node("node-1", first.fleet_port)
        node_2 = deployment.node("node-2", second.fleet_port)
        node_3 = deployment.node("node-3", several.fleet_port)
        node_id = node_1.wait_active()
        node_2.wait_active()
        node_3.wait_active()
        for _ in range(2):  # the CLI's calls land on both replicas in turn
            assert len(deployment.list_nodes()) == 3
        unregistered = deployment.cli("supernode", "unregister", str(node_id), "replica-1")
        assert unregistered.returncode == 0, unregistered.stderr
        assert node_1.wait_exit(30) == 1
        assert re.search("unregistered", one_error_line(node_1.log))
        first.wait_for("refused .*node-unregistered")  # by replica 0, which node-1 talked to
        deployment.pki.ca.revoke(
            certificate_file=deployment.pki.paths("node-2")[0],
            reason=RevocationReason.KEY_COMPROMISE,
        )
        assert node_2.wait_exit(30) == 1
        assert "certificate revoked" in one_error_line(node_2.log)
        assert node_3.process is not None
        assert node_3.process.poll() is None
        statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
        assert statuses["CN=node-3,O=Clinic C"] == "online"
    finally:
        several.stop()
