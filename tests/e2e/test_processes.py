"""The real console programs: link, nodes and CLI as subprocesses over TLS on 127.0.0.1.

Each refusal sits beside its control in the same test: a good node or CLI that works.
"""

from __future__ import annotations

from pathlib import Path

from flwrmtls.pki import CertificateAuthority, RevocationReason
from flwrmtls.testing.processes import NodeProcess, run_cli

from .deployment import Deployment, free_port


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_nodes_join_and_the_operator_lists_them(deployment: Deployment) -> None:
    link = deployment.start_link()
    nodes = [deployment.node(n, link.fleet_port) for n in ("node-1", "node-2")]
    ids = {node.wait_active() for node in nodes}
    deployment.profile(link.control_port)
    listed = deployment.list_nodes()
    assert {n["node_id"] for n in listed} == ids
    assert {n["identity"] for n in listed} == {"CN=node-1,O=Hospital A", "CN=node-2,O=Hospital B"}
    assert {n["status"] for n in listed} == {"online"}
    assert all(n["auth_method"] == "certificate" and n["cert_not_after"] for n in listed)
    table = run_cli(["supernode", "list"], env=deployment.env)
    assert table.returncode == 0
    assert "CN=node-1,O=Hospital A" in table.stdout
    assert "online" in table.stdout
    assert "\x1b[" not in table.stdout  # not a terminal: no colour codes
    # A node's certificate may not drive the Control API.
    deployment.profile(link.control_port, cert="node-1", name="as-node")
    refused = run_cli(["supernode", "list", "as-node"], env=deployment.env)
    assert refused.returncode == 1
    assert "may not call ListNodes" in one_error_line(refused.stderr)
    # Stopping a node makes it offline at once (it deactivates).
    assert nodes[0].stop() == 0
    statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
    assert statuses == {"CN=node-1,O=Hospital A": "offline", "CN=node-2,O=Hospital B": "online"}


def test_revoked_node_is_refused_with_one_line_and_others_keep_working(
    deployment: Deployment,
) -> None:
    deployment.pki.ca.issue_node("node-3", organization="Clinic C")
    deployment.pki.ca.revoke(
        certificate_file=deployment.pki.paths("node-3")[0], reason=RevocationReason.KEY_COMPROMISE
    )
    link = deployment.start_link()
    good = deployment.node("node-1", link.fleet_port)
    good.wait_active()
    revoked = deployment.node("node-3", link.fleet_port)
    assert revoked.wait_exit() == 1
    line = one_error_line(revoked.log)
    assert "certificate revoked" in line
    assert "keyCompromise" in line
    refusal = link.wait_for(r"refused .* revoked: .* certificate sha256:[0-9a-f]{64}")
    assert "BEGIN CERTIFICATE" not in link.log
    assert refusal
    deployment.profile(link.control_port)
    assert [n["identity"] for n in deployment.list_nodes()] == ["CN=node-1,O=Hospital A"]
    assert good.process is not None
    assert good.process.poll() is None


def test_link_restart_keeps_nodes_and_nodes_reconnect(deployment: Deployment) -> None:
    fleet, control = free_port(), free_port()
    args = deployment.link_args(f"127.0.0.1:{fleet}", f"127.0.0.1:{control}")
    link = deployment.start_link(args)
    node = deployment.node("node-1", fleet)
    node_id = node.wait_active()
    assert link.stop() == 0
    node.wait_for("retrying in")
    deployment.start_link(args, name="link-2")
    node.wait_for(rf"link reachable again.*\n.*node active: node id {node_id}")
    deployment.profile(control)
    listed = deployment.list_nodes()
    assert [(n["node_id"], n["status"]) for n in listed] == [(node_id, "online")]


def test_second_connection_with_the_same_identity_supersedes_the_first(
    deployment: Deployment,
) -> None:
    link = deployment.start_link()
    first = deployment.node("node-1", link.fleet_port)
    node_id = first.wait_active()
    # Its own state directory: the same flags would name the first node's, which it locks.
    second = deployment.node(
        "node-1", link.fleet_port, "--state-dir", str(deployment.tmp / "second"), cert="node-1"
    )
    assert second.wait_active() == node_id
    assert first.wait_exit() == 1
    assert "session superseded" in one_error_line(first.log)
    assert second.process is not None
    assert second.process.poll() is None


def test_node_gives_up_when_no_link_listens(deployment: Deployment) -> None:
    node = deployment.node("node-1", free_port(), "--max-retries", "1")
    assert node.wait_exit() == 1
    line = one_error_line(node.log)
    assert "gave up after 2 attempt(s)" in line
    assert "connection refused" in line


def test_plaintext_and_tls_mismatches_are_named(deployment: Deployment) -> None:
    link = deployment.start_link()
    # A closed connection could also be a link dying: retried within the bound, then named.
    plain = NodeProcess(
        ["--superlink", f"127.0.0.1:{link.fleet_port}", "--insecure", "--max-retries", "1"],
        deployment.tmp / "plain.log",
        deployment.env,
    )
    deployment.processes.append(plain)
    plain.start()
    assert plain.wait_exit() == 1
    line = one_error_line(plain.log)
    assert "gave up after 2 attempt(s)" in line
    assert "probably requires TLS" in line

    insecure_link = deployment.start_link(
        ["--insecure", "--fleet-api-address", "127.0.0.1:0", "--control-api-address",
         "127.0.0.1:0", "--serverappio-api-address", "127.0.0.1:0",
         "--database", str(deployment.tmp / "plain.db")],
        name="plain-link",
    )  # fmt: skip
    assert "INSECURE" in insecure_link.log
    tls_node = deployment.node("node-1", insecure_link.fleet_port)
    assert tls_node.wait_exit() == 1
    assert "does not speak TLS" in one_error_line(tls_node.log)
    control = deployment.node("node-2", link.fleet_port)  # the TLS link still serves
    control.wait_active()


def test_node_without_certificate_and_cli_without_one_are_told_so(deployment: Deployment) -> None:
    link = deployment.start_link()
    # A closed handshake could also be a link dying: retried within the bound, then named.
    bare = NodeProcess(
        ["--superlink", f"127.0.0.1:{link.fleet_port}",
         "--root-certificates", str(deployment.pki.trust_bundle_path), "--max-retries", "1"],
        deployment.tmp / "bare.log", deployment.env,
    )  # fmt: skip
    deployment.processes.append(bare)
    bare.start()
    assert bare.wait_exit() == 1
    line = one_error_line(bare.log)
    assert "gave up after 2 attempt(s)" in line
    assert "requires a client certificate" in line
    result = run_cli(
        ["config", "add", "nocert", "--address", f"127.0.0.1:{link.control_port}",
         "--root-certificates", str(deployment.pki.trust_bundle_path)],
        env=deployment.env,
    )  # fmt: skip
    assert result.returncode == 0
    refused = run_cli(["supernode", "list", "nocert"], env=deployment.env)
    assert refused.returncode == 1
    line = one_error_line(refused.stderr)
    assert "requires a client certificate (give client-certificate and client-private-key" in line
    assert "or it is restarting" in line  # the CLI does not retry: it names both
    deployment.profile(link.control_port)
    assert deployment.list_nodes() == []  # control: with a certificate it works


def test_cli_that_cannot_verify_the_link_says_certificate_verify_failed(
    deployment: Deployment, tmp_path: Path
) -> None:
    link = deployment.start_link()
    stranger = CertificateAuthority.create(tmp_path / "stranger")
    chain, key = deployment.pki.paths("cli-operator")
    run_cli(
        ["config", "add", "wrongroot", "--address", f"127.0.0.1:{link.control_port}",
         "--root-certificates", str(stranger.trust_bundle_path),
         "--client-certificate", str(chain), "--client-private-key", str(key)],
        env=deployment.env,
    )  # fmt: skip
    refused = run_cli(["supernode", "list", "wrongroot"], env=deployment.env)
    assert refused.returncode == 1
    assert "certificate verify failed" in one_error_line(refused.stderr)
    deployment.profile(link.control_port)
    assert deployment.list_nodes() == []
