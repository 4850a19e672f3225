"""Certificates that change while the federation runs: files replaced under live processes.

Each refusal beside its control: the node or certificate that should keep working does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.testing.processes import NodeProcess

from .deployment import Deployment
from .probe_app import write_probe_app


def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def replace_atomically(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staging)
    os.replace(staging, target)


def served_serial(port: int, ca: Path, chain: Path, key: Path) -> int:
    """The serial of the certificate the link presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(chain), str(key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def listed(deployment: Deployment) -> dict[str, dict[str, object]]:
    result = deployment.cli("supernode", "list", "--format", "json", "-v")
    assert result.returncode == 0, result.stderr
    return {str(n["identity"]): n for n in json.loads(result.stdout)}


def test_server_certificate_rotation_keeps_connections_and_serves_the_new_one(
    deployment: Deployment, tmp_path: Path
) -> None:
    pki = deployment.pki
    live = tmp_path / "live"
    live.mkdir()
    chain, key = pki.paths("server")
    shutil.copyfile(chain, live / "server.pem")
    shutil.copyfile(key, live / "server.key")
    args = deployment.link_args()
    args[args.index("--ssl-certfile") + 1] = str(live / "server.pem")
    args[args.index("--ssl-keyfile") + 1] = str(live / "server.key")
    link = deployment.start_link(args)
    deployment.profile(link.control_port)
    node = deployment.node("node-1", link.fleet_port)
    node.wait_active()
    probe = (pki.trust_bundle_path, *pki.paths("node-2"))
    old_serial = served_serial(link.fleet_port, *probe)
    # A broken file is reported and the last good certificate stays in use.
    (live / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    link.wait_for("TLS files changed but cannot be used, keeping the last good")
    assert served_serial(link.fleet_port, *probe) == old_serial
    # A new certificate and key: new handshakes get it, the open connection stays up.
    rotated = pki.ca.issue_server("server-2")
    replace_atomically(rotated.key_path, live / "server.key")
    replace_atomically(rotated.chain_path, live / "server.pem")
    link.wait_for("TLS material reloaded")
    eventually(
        lambda: served_serial(link.fleet_port, *probe) == rotated.serial,
        what="the link presents the new server certificate",
    )
    assert rotated.serial != old_serial
    heartbeats = node.log.count("\n")
    time.sleep(2.5)  # a couple of heartbeat intervals on the old connection
    assert node.process is not None
    assert node.process.poll() is None
    assert "retrying" not in node.log
    assert "reachable again" not in node.log
    assert listed(deployment)["CN=node-1,O=Hospital A"]["status"] == "online"
    assert node.log.count("\n") >= heartbeats


def test_ca_rollover(deployment: Deployment, tmp_path: Path) -> None:
    pki = deployment.pki
    clients = tmp_path / "clients.pem"
    shutil.copyfile(pki.trust_bundle_path, clients)
    args = [*deployment.link_args(), "--ssl-client-ca-certfile", str(clients)]
    link = deployment.start_link(args)
    new_ca = CertificateAuthority.create(tmp_path / "new-ca", name="New CA")
    new_node = new_ca.issue_node("node-9", organization="New Org")

    def start_new_ca_node(name: str, *extra: str) -> NodeProcess:
        process = NodeProcess(
            ["--superlink", f"127.0.0.1:{link.fleet_port}",
             "--root-certificates", str(pki.trust_bundle_path),
             "--ssl-client-certfile", str(new_node.chain_path),
             "--ssl-client-keyfile", str(new_node.key_path),
             "--clientappio-api-address", "127.0.0.1:0",
             "--state-dir", str(tmp_path / f"{name}-state"), *extra],  # one identity, 2 nodes
            tmp_path / f"{name}.log", deployment.env,
        )  # fmt: skip
        deployment.processes.append(process)
        process.start()
        return process

    old_node = deployment.node("node-1", link.fleet_port)
    old_node.wait_active()
    # The new CA is not trusted yet: the link closes the handshake, which a node cannot tell
    # from a link restarting. A bounded node gives up, naming both; an unbounded one waits.
    too_early = start_new_ca_node("too-early", "--max-retries", "1")
    welcome = start_new_ca_node("welcome")
    assert too_early.wait_exit() == 1
    assert "may have refused this certificate, or be restarting" in too_early.log
    welcome.wait_for("may have refused this certificate, or be restarting; .* retrying in")
    # Rollover period: both CAs in the bundle. The waiting node gets in on its next attempt.
    clients.write_bytes(pki.trust_bundle_path.read_bytes() + new_ca.trust_bundle_path.read_bytes())
    link.wait_for(r"client CA bundle: 2 certificate\(s\)")
    welcome.wait_active(timeout=90)
    # The old CA is removed: its node is refused on its next call on its open connection.
    clients.write_bytes(new_ca.trust_bundle_path.read_bytes())
    assert old_node.wait_exit(timeout=20) == 1
    assert "not signed by a trusted CA" in old_node.log
    assert welcome.process is not None
    assert welcome.process.poll() is None  # control: the new CA's node stays


def test_node_certificate_rotation_mid_run_by_symlink_swap(
    deployment: Deployment, tmp_path: Path
) -> None:
    pki = deployment.pki
    secret = tmp_path / "secret"  # the layout Kubernetes gives a mounted secret
    first = secret / "..2026_11_22_a"
    first.mkdir(parents=True)
    chain, key = pki.paths("node-1")
    shutil.copyfile(chain, first / "tls.crt")
    shutil.copyfile(key, first / "tls.key")
    (secret / "..data").symlink_to(first.name)
    (secret / "tls.crt").symlink_to("..data/tls.crt")
    (secret / "tls.key").symlink_to("..data/tls.key")
    link = deployment.start_link()
    deployment.profile(link.control_port)
    rotating = NodeProcess(
        ["--superlink", f"127.0.0.1:{link.fleet_port}",
         "--root-certificates", str(pki.trust_bundle_path),
         "--ssl-client-certfile", str(secret / "tls.crt"),
         "--ssl-client-keyfile", str(secret / "tls.key"),
         "--clientappio-api-address", "127.0.0.1:0", "--node-config", "name=a"],
        tmp_path / "rotating.log", deployment.env,
    )  # fmt: skip
    deployment.processes.append(rotating)
    rotating.start()
    node_id = rotating.wait_active()
    deployment.node("node-2", link.fleet_port, "--node-config", "name=b").wait_active()
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli("run", str(app), "--run-config", "sleep-on=a sleep-seconds=4 rounds=2")
    assert started.returncode == 0, started.stderr
    rotating.wait_for("ClientApp process")
    # Mid-round: the certificate is reissued (same Subject, new key) and the secret swapped.
    reissued = pki.ca.issue_node(
        "node-1", organization="Hospital A", options=LeafOptions(force=True)
    )
    second = secret / "..2026_11_22_b"
    second.mkdir()
    shutil.copyfile(reissued.chain_path, second / "tls.crt")
    shutil.copyfile(reissued.key_path, second / "tls.key")
    (secret / "..data_tmp").symlink_to(second.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    rotating.wait_for("certificate changed")
    rotating.wait_for(rf"activating again with the new certificate[\s\S]*node id {node_id}")
    logs = deployment.cli("log", "1", "--stream", timeout=60)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "round 2/2: train" in logs.stdout
    fingerprint = "sha256:" + reissued.certificate.fingerprint(hashes.SHA256()).hex()
    assert listed(deployment)["CN=node-1,O=Hospital A"]["cert_fingerprint"] == fingerprint


def test_revocation_and_expiry_on_live_connections(deployment: Deployment, tmp_path: Path) -> None:
    pki = deployment.pki
    now = datetime.now(UTC)
    pki.ca.issue_node("short-lived", options=LeafOptions(
        not_before=now - timedelta(minutes=1), not_after=now + timedelta(seconds=12)))  # fmt: skip
    link = deployment.start_link()
    deployment.profile(link.control_port)
    steady = deployment.node("node-2", link.fleet_port)
    revoked = deployment.node("node-1", link.fleet_port)
    expiring = deployment.node("short-lived", link.fleet_port)
    for node in (steady, revoked, expiring):
        node.wait_active()
    assert "this node's certificate expires on" in expiring.log  # warned at start
    assert listed(deployment)["CN=short-lived"]["cert_expires_soon"] is True
    assert listed(deployment)["CN=node-2,O=Hospital B"]["cert_expires_soon"] is False
    pki.ca.revoke(certificate_file=pki.paths("node-1")[0])
    assert revoked.wait_exit(timeout=20) == 1
    assert "certificate revoked" in revoked.log
    assert expiring.wait_exit(timeout=40) == 1
    assert "certificate expired on" in expiring.log
    assert steady.process is not None
    assert steady.process.poll() is None  # control


def test_unregister_a_certificate_node_and_readmit_it(deployment: Deployment) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    node = deployment.node("node-1", link.fleet_port)
    node_id = node.wait_active()
    other = deployment.node("node-2", link.fleet_port)
    other.wait_active()
    result = deployment.cli("supernode", "unregister", str(node_id))
    assert result.returncode == 0, result.stderr
    assert node.wait_exit(timeout=20) == 1
    assert "node unregistered" in node.log
    again = deployment.node("node-1-again", link.fleet_port, cert="node-1")
    assert again.wait_exit() == 1
    assert f"flwrmtls supernode readmit {node_id}" in again.log
    assert listed(deployment)["CN=node-1,O=Hospital A"]["status"] == "unregistered"
    readmitted = deployment.cli("supernode", "readmit", str(node_id))
    assert readmitted.returncode == 0, readmitted.stderr
    back = deployment.node("node-1-back", link.fleet_port, cert="node-1")
    assert back.wait_active() == node_id
    assert other.process is not None
    assert other.process.poll() is None  # control: the other node never noticed
