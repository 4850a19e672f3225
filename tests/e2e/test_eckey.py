"""EC-key nodes end to end, with keys made by ssh-keygen: registration, mixed fleets, the
link a signature is for, the certificate node a key is bound to.

Each refusal sits beside its control: the same key accepted once registered, the same link
admitting the other kind of node, the same node admitted by the link it signed for.
"""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from flwrmtls.wire.metadata import REFUSAL_KEY

from .deployment import Deployment
from .probe_app import write_probe_app


def ssh_keygen(directory: Path, name: str, bits: int = 384) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", str(bits), "-N", "", "-f", str(key)],
        check=True,
    )
    return key


def fingerprint(key: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()[1]


def one_error_line(log: str) -> str:
    assert "Traceback" not in log
    [line] = [line for line in log.splitlines() if "error:" in line]
    return line


def nodes(deployment: Deployment, *flags: str) -> dict[str, dict[str, object]]:
    result = deployment.cli("supernode", "list", "--format", "json", *flags)
    assert result.returncode == 0, result.stderr
    return {str(n["identity"]): n for n in json.loads(result.stdout)}


def test_cli_managed_mode_register_unregister_and_register_again(
    deployment: Deployment, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    key_1, key_2 = ssh_keygen(keys, "node_1"), ssh_keygen(keys, "node_2", bits=256)
    link = deployment.start_link(
        [*deployment.link_args(), "--node-auth", "key", "--enable-supernode-auth"]
    )
    deployment.profile(link.control_port)
    # Not registered yet: told exactly that, with the fingerprint and the command.
    early = deployment.node("early", link.fleet_port, cert="", ec_key=key_1)
    assert early.wait_exit() == 1
    line = one_error_line(early.log)
    assert f"public key {fingerprint(key_1)} is not registered" in line
    assert "flwrmtls supernode register" in line
    assert fingerprint(key_1) in link.wait_for(r"refused .*unregistered-key.*").group(0)
    assert "BEGIN" not in link.log
    # A private key given by mistake is refused before anything is sent.
    mistake = deployment.cli("supernode", "register", str(key_1))
    assert mistake.returncode == 1
    assert "is a private key" in mistake.stderr
    assert "PRIVATE" not in mistake.stderr
    # Register both in one call.
    registered = deployment.cli(
        "supernode", "register", f"{key_1}.pub", f"{key_2}.pub", "--format", "json"
    )
    assert registered.returncode == 0, registered.stderr
    ids = {Path(r["file"]).name: r["node_id"] for r in json.loads(registered.stdout)}
    listed = nodes(deployment)
    assert listed[fingerprint(key_1)]["status"] == "registered"
    node_1 = deployment.node("node-1", link.fleet_port, "--node-config", "name=a",
                             cert="", ec_key=key_1)  # fmt: skip
    node_2 = deployment.node("node-2", link.fleet_port, cert="", ec_key=key_2)
    assert node_1.wait_active() == ids["node_1.pub"]
    assert node_2.wait_active() == ids["node_2.pub"]
    listed = nodes(deployment)
    assert {listed[fingerprint(k)]["status"] for k in (key_1, key_2)} == {"online"}
    assert listed[fingerprint(key_1)]["auth_method"] == "key"
    # A run across key nodes; node 1 is unregistered while the round waits for it.
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "--run-config", "sleep-on=a sleep-seconds=30 min-train=1 rounds=1"
    )
    assert started.returncode == 0, started.stderr
    node_1.wait_for("ClientApp process")
    dropped = deployment.cli("supernode", "unregister", str(ids["node_1.pub"]))
    assert dropped.returncode == 0, dropped.stderr
    assert node_1.wait_exit() == 1
    refusal = one_error_line(node_1.log)
    assert "node unregistered" in refusal
    assert "flwrmtls supernode register <its .pub file>" in refusal  # the way back in
    logs = deployment.cli("log", "1", "--stream", timeout=60)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert f"node {fingerprint(key_1)} unregistered" in logs.stdout
    assert fingerprint(key_1) not in nodes(deployment)
    assert nodes(deployment, "-v")[fingerprint(key_1)]["status"] == "unregistered"
    # Registering it again lets it back in, with the same node id.
    again = deployment.cli("supernode", "register", f"{key_1}.pub")
    assert "registered again" in again.stdout
    back = deployment.node("node-1b", link.fleet_port, cert="", ec_key=key_1)
    assert back.wait_active() == ids["node_1.pub"]
    deployment.assert_tmp_intact()


def test_automatic_mode_accepts_any_signing_node_and_refuses_unsigned(
    deployment: Deployment, tmp_path: Path
) -> None:
    key = ssh_keygen(tmp_path / "keys", "node_1", bits=521)
    link = deployment.start_link([*deployment.link_args(), "--node-auth", "key"])
    unsigned = deployment.node("unsigned", link.fleet_port, cert="")
    assert unsigned.wait_exit() == 1
    assert "requires EC-key signatures" in one_error_line(unsigned.log)
    signed = deployment.node("signed", link.fleet_port, cert="", ec_key=key)  # control
    signed.wait_active()


def test_mixed_fleet_runs_an_app_across_certificate_and_key_nodes(
    deployment: Deployment, tmp_path: Path
) -> None:
    key = ssh_keygen(tmp_path / "keys", "node_k")
    link = deployment.start_link(
        [*deployment.link_args(), "--key-fleet-api-address", "127.0.0.1:0",
         "--enable-supernode-auth"]
    )  # fmt: skip
    key_port = int(link.wait_for(r"EC-key nodes also on port (\d+)").group(1))
    deployment.profile(link.control_port)
    assert deployment.cli("supernode", "register", f"{key}.pub").returncode == 0
    certificate_node = deployment.node("node-1", link.fleet_port)
    key_node = deployment.node("node-k", key_port, cert="", ec_key=key)
    certificate_node.wait_active()
    key_node.wait_active()
    # A key node on the certificate listener is refused at the handshake (control: above),
    # which it cannot tell from a link restarting: within its bound, then both named.
    wrong_door = deployment.node(
        "wrong-door", link.fleet_port, "--max-retries", "1", cert="", ec_key=key
    )
    assert wrong_door.wait_exit() == 1
    assert "either it requires a client certificate" in wrong_door.log
    listed = nodes(deployment)
    assert listed["CN=node-1,O=Hospital A"]["auth_method"] == "certificate"
    assert listed[fingerprint(key)]["auth_method"] == "key"
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli("run", str(app), "--stream", "--run-config", "rounds=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 2/2: train" in result.stdout
    assert "(2 nodes)" in result.stdout


def test_requiring_both_a_certificate_and_a_registered_key(
    deployment: Deployment, tmp_path: Path
) -> None:
    key = ssh_keygen(tmp_path / "keys", "node_1")
    link = deployment.start_link(
        [*deployment.link_args(), "--node-auth", "certificate+key", "--enable-supernode-auth"]
    )
    deployment.profile(link.control_port)
    certificate_only = deployment.node("cert-only", link.fleet_port, cert="node-1")
    assert certificate_only.wait_exit() == 1
    assert "requires EC-key signatures" in one_error_line(certificate_only.log)
    unregistered = deployment.node("unregistered", link.fleet_port, cert="node-1", ec_key=key)
    assert unregistered.wait_exit() == 1
    assert "is not registered" in one_error_line(unregistered.log)
    registered = deployment.cli(
        "supernode", "register", f"{key}.pub", "--identity", "CN=node-1,O=Hospital A"
    )
    assert registered.returncode == 0, registered.stderr
    both = deployment.node("both", link.fleet_port, cert="node-1", ec_key=key)  # control
    both.wait_active()
    assert "CN=node-1,O=Hospital A" in nodes(deployment)


def test_certificate_and_key_mode_binds_each_key_to_its_certificates_node(
    deployment: Deployment, tmp_path: Path
) -> None:
    """As node B, holding node A's registered key (stolen, or shared by mistake): refused."""
    key_a = ssh_keygen(tmp_path / "keys", "node_a")
    link = deployment.start_link(
        [*deployment.link_args(), "--node-auth", "certificate+key", "--enable-supernode-auth"]
    )
    deployment.profile(link.control_port)
    # A key without the node it belongs to cannot be used on this link: refused at once.
    unbound = deployment.cli("supernode", "register", f"{key_a}.pub")
    assert unbound.returncode == 1
    assert "--identity" in unbound.stderr
    assert "Traceback" not in unbound.stderr
    misspelt = deployment.cli(
        "supernode", "register", f"{key_a}.pub", "--identity", "CN=node-1, O=Hospital A"
    )
    assert misspelt.returncode == 1
    assert "did you mean 'CN=node-1,O=Hospital A'" in misspelt.stderr
    bound = deployment.cli(
        "supernode", "register", f"{key_a}.pub", "--identity", "CN=node-1,O=Hospital A",
        "--format", "json",
    )  # fmt: skip
    assert bound.returncode == 0, bound.stderr
    [row] = json.loads(bound.stdout)
    node_a = deployment.node("node-a", link.fleet_port, cert="node-1", ec_key=key_a)
    assert node_a.wait_active() == row["bound_node_id"]  # control: A's certificate, A's key
    stolen = deployment.node("node-b", link.fleet_port, cert="node-2", ec_key=key_a)
    assert stolen.wait_exit() == 1
    line = one_error_line(stolen.log)
    assert "is not registered for this certificate's node (CN=node-2,O=Hospital B" in line
    assert "key-not-bound" in link.wait_for(r"refused .*key-not-bound.*").group(0)
    assert "CN=node-2,O=Hospital B" not in nodes(deployment)
    assert node_a.process is not None
    assert node_a.process.poll() is None


class _RecordingLink(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A link the node trusts by mistake (a server certificate from the node's CA): it keeps
    every call's metadata and request bytes, and answers nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, Any], ...], bytes]] = []
        self.called = threading.Event()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method

        def record(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append((method, tuple(context.invocation_metadata()), request))
            self.called.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            return b""

        return grpc.unary_unary_rpc_method_handler(record)


def test_a_signature_made_for_one_link_is_refused_by_another(
    deployment: Deployment, tmp_path: Path
) -> None:
    """As a link that a node also talks to: it replays the node's ActivateNode to another
    link within the window, to take over the node's session there. Refused: wrong-audience.
    The node itself, signing for that link, is admitted."""
    key = ssh_keygen(tmp_path / "keys", "node_1")
    link_b = deployment.start_link([*deployment.link_args(), "--node-auth", "key"])
    malicious = deployment.pki.ca.issue_server("link-a")
    recorder = _RecordingLink()
    server = grpc.server(ThreadPoolExecutor(2), handlers=[recorder])
    credentials = grpc.ssl_server_credentials(
        [(malicious.key_path.read_bytes(), malicious.chain_path.read_bytes())]
    )
    port_a = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        victim = deployment.node("victim", port_a, cert="", ec_key=key)
        assert recorder.called.wait(timeout=30), victim.log
        victim.stop()
    finally:
        server.stop(0)
    method, metadata, request = recorder.calls[0]
    assert method == "/flwrmtls.proto.Fleet/ActivateNode"
    signed = tuple((k, v) for k, v in metadata if k.startswith("flwrmtls-"))
    with grpc.secure_channel(
        f"127.0.0.1:{link_b.fleet_port}",
        grpc.ssl_channel_credentials(deployment.pki.trust_bundle_path.read_bytes()),
    ) as channel:
        replay = channel.unary_unary(method, None, None)  # bytes as recorded, both ways
        try:
            replay(request, metadata=signed, timeout=10)
        except grpc.RpcError as error:
            refused: grpc.RpcError | None = error
        else:
            refused = None
    assert refused is not None, "link B admitted a signature made for link A"
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
    trailers = {m.key: str(m.value) for m in refused.trailing_metadata() or ()}
    assert trailers[REFUSAL_KEY] == "wrong-audience"
    assert "signature made for another link" in (refused.details() or "")
    assert fingerprint(key) not in nodes_of(deployment, link_b.control_port)
    same_node = deployment.node("same-node", link_b.fleet_port, cert="", ec_key=key)  # control
    same_node.wait_active()
    assert fingerprint(key) in nodes_of(deployment, link_b.control_port)


def nodes_of(deployment: Deployment, control_port: int) -> dict[str, dict[str, object]]:
    deployment.profile(control_port)
    return nodes(deployment)
