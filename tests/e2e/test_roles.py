"""Who may do what, end to end: operator and user certificates against a real link and node.

Users start runs and see and stop their own; another user's run is invisible to ``ls`` and
refused to ``log`` and ``stop``; operators see and stop every run and alone manage nodes and
read the audit trail. Each refusal sits beside the same command succeeding for the caller
allowed to run it. (Roles from the OU, for certificates of other CAs, are tested in-process in
tests/auth/test_identity.py; the interceptor's recording in tests/auth/test_audit.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.testing.processes import CliResult

from .deployment import Deployment
from .probe_app import write_probe_app

OPERATOR = "role=operator,CN=cli-operator"
ALICE = "role=user,CN=alice"
BOB = "role=user,CN=bob"
NODE = "CN=node-1,O=Hospital A"
WAITING = "min-available=2 min-train=2 wait-timeout=60"
"""One node, two needed: the run stays active until it is stopped."""


def setup(deployment: Deployment, *users: str) -> int:
    """A link, node-1 active, and profiles ``op`` (the operator) and one per user name."""
    link = deployment.start_link()
    deployment.node("node-1", link.fleet_port).wait_active()
    deployment.profile(link.control_port, name="op")
    for user in users:
        deployment.pki.ca.issue_cli(user, role="user")
        deployment.profile(link.control_port, cert=user, name=user)
    return link.control_port


def ok(result: CliResult) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(result: CliResult) -> str:
    """The one line a refused command prints; it exits 1 without a traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flwrmtls: error: "), lines[0]
    return lines[0]


def run_ids(deployment: Deployment, connection: str) -> dict[int, dict[str, object]]:
    listed = json.loads(ok(deployment.cli("ls", connection, "--format", "json")))
    return {int(r["run_id"]): r for r in listed}


def public_key_file(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path = directory / "node-key.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_users_see_and_stop_their_own_runs_and_operators_all(
    deployment: Deployment, tmp_path: Path
) -> None:
    setup(deployment, "alice", "bob")
    app = write_probe_app(tmp_path / "app")
    assert "run 1 started" in ok(deployment.cli("run", str(app), "alice", "--run-config", WAITING))
    assert "run 2 started" in ok(deployment.cli("run", str(app), "bob", "--run-config", WAITING))

    # Each user lists only their own run, which records them as its owner.
    alices = run_ids(deployment, "alice")
    assert list(alices) == [1]
    assert alices[1]["owner"] == ALICE
    assert list(run_ids(deployment, "bob")) == [2]
    # Asked by id, another user's run is "no run", exactly like a run that does not exist.
    hidden = refused(deployment.cli("ls", "bob", "--run-id", "1"))
    missing = refused(deployment.cli("ls", "bob", "--run-id", "99"))
    assert hidden.endswith("NOT_FOUND: no run 1")
    assert missing.endswith("NOT_FOUND: no run 99")
    assert ok(deployment.cli("ls", "alice", "--run-id", "1"))  # control: the owner sees it

    # Logs and stop of another user's run are refused, one line each; the owner's work.
    for command in ("log", "stop"):
        line = refused(deployment.cli(command, "1", "bob"))
        assert line.endswith("refused this client: run 1 belongs to another user"), line
    ok(deployment.cli("log", "1", "alice"))

    # The operator sees every run, with its owner.
    everything = run_ids(deployment, "op")
    assert {run_id: r["owner"] for run_id, r in everything.items()} == {1: ALICE, 2: BOB}
    assert all(r["status"] not in ("stopped", "completed", "failed") for r in everything.values())

    # The owner stops their run; the operator stops the other user's.
    assert "run 1 stopped" in ok(deployment.cli("stop", "1", "alice"))
    assert "run 2 stopped" in ok(deployment.cli("stop", "2", "op"))
    final = run_ids(deployment, "op")
    assert [(r["status"], r["reason"]) for r in final.values()] == [
        ("stopped", f"stopped by {ALICE}"),
        ("stopped", f"stopped by {OPERATOR}"),
    ]


def test_only_operators_manage_nodes_and_read_the_audit_trail(
    deployment: Deployment, tmp_path: Path
) -> None:
    setup(deployment, "alice")
    key_file = public_key_file(tmp_path)
    user_commands = [
        ("supernode", "list", "alice"),
        ("supernode", "register", str(key_file), "alice"),
        ("supernode", "unregister", "12345", "alice"),
        ("audit", "alice"),
    ]
    methods = ["ListNodes", "RegisterNodeKeys", "UnregisterNode", "ListAudit"]
    for command, method in zip(user_commands, methods, strict=True):
        line = refused(deployment.cli(*command))
        assert f"user certificate '{ALICE}' may not call {method}" in line, line
    # Controls: the operator may do each.
    [node] = json.loads(ok(deployment.cli("supernode", "list", "op", "--format", "json")))
    assert node["identity"] == NODE
    registered = json.loads(
        ok(deployment.cli("supernode", "register", str(key_file), "op", "--format", "json"))
    )
    assert [r["outcome"] for r in registered] == ["registered"]
    key_node = str(registered[0]["node_id"])
    assert "unregistered" in ok(deployment.cli("supernode", "unregister", key_node, "op"))
    ok(deployment.cli("audit", "op"))


def test_the_audit_trail_shows_calls_admissions_and_refusals(deployment: Deployment) -> None:
    setup(deployment, "alice")
    ok(deployment.cli("ls", "alice"))
    refused(deployment.cli("supernode", "list", "alice"))
    ok(deployment.cli("supernode", "list", "op"))

    trail = json.loads(ok(deployment.cli("audit", "op", "--format", "json")))
    seen = [(e["identity"], e["method"].rsplit(".", 1)[-1], e["outcome"]) for e in trail]
    # Newest first: the operator's listing, the user's refusal, the user's listing, and
    # before them all the node's admission.
    assert seen[:3] == [
        (OPERATOR, "Control/ListNodes", "ok"),
        (ALICE, "Control/ListNodes", "not-permitted"),
        (ALICE, "Control/ListRuns", "ok"),
    ]
    assert (NODE, "Fleet/ActivateNode", "ok") in seen[3:]
    assert all(e["auth_method"] == "certificate" for e in trail)
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in trail)
    assert [e["seq"] for e in trail] == sorted((e["seq"] for e in trail), reverse=True)

    # One identity's entries; the newest entry alone (the previous `audit` call itself).
    alices = json.loads(ok(deployment.cli("audit", "op", "--identity", ALICE, "--format", "json")))
    assert [(e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in alices] == [
        ("ListNodes", "not-permitted"),
        ("ListRuns", "ok"),
    ]
    [newest] = json.loads(ok(deployment.cli("audit", "op", "--limit", "1", "--format", "json")))
    assert (newest["identity"], newest["method"], newest["outcome"]) == (
        OPERATOR, "/flwrmtls.proto.Control/ListAudit", "ok",
    )  # fmt: skip
    table = ok(deployment.cli("audit", "op", "--identity", ALICE)).splitlines()
    assert table[0].split() == ["TIME", "IDENTITY", "AUTH", "METHOD", "OUTCOME", "DETAIL"]
    assert "Control/ListNodes  not-permitted  user certificate" in table[1]
