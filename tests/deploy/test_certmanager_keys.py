"""Every key cert-manager can write, laid out as the kubelet mounts its Secret, through a real
link and a real node: the algorithms TLS allows are accepted on both sides, the others are
refused at start-up in one line, and ``rotationPolicy: Always`` (a new key on each renewal,
swapped in by ``..data``) keeps a node's id and its connection.

The link is configured by its own flag parser (``flwrmtls-superlink`` flags pointing into the
mounted Secret); the node side loads the files with the node's loader and activates over
real mTLS. cert-manager itself cannot run here: its output is reproduced with the openssl CLI
(tests/deploy/certmanager.py says exactly what is reproduced).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.auth.identity import identity_from_certificate
from flwrmtls.errors import InputError
from flwrmtls.link.configure import config_from_args
from flwrmtls.link.main import parser
from flwrmtls.testing.link import node_client, running_link
from tests.e2e.deployment import Deployment
from tests.e2e.relay import relay_to

from .certmanager import CertManagerPki, KeySpec, swap_secret, write_secret

ACCEPTED = [
    KeySpec("RSA", 2048, "PKCS1"),
    KeySpec("RSA", 2048, "PKCS8"),
    KeySpec("RSA", 4096, "PKCS1"),
    KeySpec("ECDSA", 256, "PKCS1"),
    KeySpec("ECDSA", 256, "PKCS8"),
    KeySpec("ECDSA", 384, "PKCS1"),
    KeySpec("ECDSA", 384, "PKCS8"),
]
"""cert-manager's RSA 8192 is left out for the time its key takes to generate here."""

REFUSED = [
    KeySpec("ECDSA", 521, "PKCS1"),
    KeySpec("ECDSA", 521, "PKCS8"),
    KeySpec("Ed25519", 0, "PKCS1"),  # cert-manager writes PKCS#8 for Ed25519 either way
    KeySpec("Ed25519", 0, "PKCS8"),
]
"""Keys gRPC's TLS cannot sign a handshake with (measured: NO_COMMON_SIGNATURE_ALGORITHMS)."""

NODE_SUBJECT = "/O=Hospital A/CN=node-1"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> CertManagerPki:
    return CertManagerPki(tmp_path_factory.mktemp("cm-root"))


@pytest.fixture(scope="module")
def intermediate_issuer(tmp_path_factory: pytest.TempPathFactory) -> CertManagerPki:
    return CertManagerPki(tmp_path_factory.mktemp("cm-intermediate"), intermediate=True)


def _link_args(secret: Path, database: Path) -> list[str]:
    """The link's flags as deploy/kubernetes/base/link.yaml gives them (mount paths aside)."""
    return [
        "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
        "--serverappio-api-address", "127.0.0.1:0", "--database", str(database),
        "--ssl-require-client-auth", "--ssl-ca-certfile", str(secret / "ca.crt"),
        "--ssl-certfile", str(secret / "tls.crt"), "--ssl-keyfile", str(secret / "tls.key"),
    ]  # fmt: skip


def _activate(issuer: CertManagerPki, tmp_path: Path, server: KeySpec, node: KeySpec) -> int:
    link_secret = write_secret(
        tmp_path / "link-tls", issuer.issue("/CN=flwrmtls-link", server, server=True).files
    )
    node_secret = write_secret(tmp_path / "node-tls", issuer.issue(NODE_SUBJECT, node).files)
    config = config_from_args(parser().parse_args(_link_args(link_secret, tmp_path / "link.db")))
    with running_link(config) as link:
        client, channel = node_client(
            link, root_certificates=node_secret / "ca.crt",
            chain=node_secret / "tls.crt", key=node_secret / "tls.key",
        )  # fmt: skip
        try:
            return client.activate().node_id
        finally:
            channel.close()


def _expected_node_id(secret: Path) -> int:
    leaf = x509.load_pem_x509_certificate((secret / "tls.crt").read_bytes())
    return identity_from_certificate(leaf).node_id


@pytest.mark.parametrize("spec", ACCEPTED, ids=lambda spec: spec.label)
def test_link_and_node_accept_each_key_cert_manager_writes(
    issuer: CertManagerPki, tmp_path: Path, spec: KeySpec
) -> None:
    # Both sides with the key under test: the link's server key and the node's client key.
    node_id = _activate(issuer, tmp_path, server=spec, node=spec)
    assert node_id == _expected_node_id(tmp_path / "node-tls")
    key = (tmp_path / "node-tls" / "tls.key").read_text()
    assert key.startswith(f"-----BEGIN {spec.pem_type}-----")


def test_an_intermediate_issuer_sends_its_chain_in_tls_crt(
    intermediate_issuer: CertManagerPki, tmp_path: Path
) -> None:
    spec = KeySpec("ECDSA", 256, "PKCS1")
    node_id = _activate(intermediate_issuer, tmp_path, server=spec, node=spec)
    chain = x509.load_pem_x509_certificates((tmp_path / "node-tls" / "tls.crt").read_bytes())
    assert len(chain) == 2  # the leaf, then the issuing CA; ca.crt is the root alone
    assert node_id == _expected_node_id(tmp_path / "node-tls")


@pytest.mark.parametrize("spec", REFUSED, ids=lambda spec: spec.label)
def test_keys_tls_cannot_use_are_refused_at_start_in_one_line(
    issuer: CertManagerPki, tmp_path: Path, spec: KeySpec
) -> None:
    good = KeySpec("ECDSA", 256, "PKCS1")
    secret = write_secret(
        tmp_path / "link-tls", issuer.issue("/CN=flwrmtls-link", spec, server=True).files
    )
    with pytest.raises(InputError) as refused:
        config_from_args(parser().parse_args(_link_args(secret, tmp_path / "link.db")))
    message = str(refused.value)
    assert message.startswith(f"--ssl-keyfile: {secret / 'tls.key'} holds ")
    assert "cert-manager: spec.privateKey.algorithm" in message
    assert "\n" not in message
    # The control: the same Secret layout with a key TLS can use starts.
    ok = write_secret(
        tmp_path / "link-ok", issuer.issue("/CN=flwrmtls-link", good, server=True).files
    )
    assert config_from_args(parser().parse_args(_link_args(ok, tmp_path / "ok.db"))).tls


def test_a_node_with_a_key_tls_cannot_use_exits_at_once(
    issuer: CertManagerPki, deployment: Deployment, tmp_path: Path
) -> None:
    """Before: the node loaded the key, then retried a handshake that can never succeed."""
    link = deployment.start_link()
    secret = write_secret(
        tmp_path / "node-tls", issuer.issue(NODE_SUBJECT, KeySpec("Ed25519", 0, "PKCS8")).files
    )
    node = _secret_node(deployment, "node-1", link.fleet_port, secret, tmp_path)
    assert node.wait_exit(60) == 1
    assert "--ssl-client-keyfile" in node.log
    assert "holds an Ed25519 key, which gRPC's TLS cannot sign a handshake with" in node.log
    assert "Traceback" not in node.log


def _secret_node(deployment: Deployment, name: str, fleet_port: int, secret: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from flwrmtls.testing.processes import NodeProcess

    args = [
        "--superlink", f"127.0.0.1:{fleet_port}",
        "--root-certificates", str(deployment.pki.trust_bundle_path),
        "--ssl-client-certfile", str(secret / "tls.crt"),
        "--ssl-client-keyfile", str(secret / "tls.key"),
        "--clientappio-api-address", "127.0.0.1:0", "--state-dir", str(tmp_path / name),
    ]  # fmt: skip
    node = NodeProcess(args, tmp_path / f"{name}.log", deployment.env)
    deployment.processes.append(node)
    node.start()
    return node


def test_rotation_policy_always_keeps_the_node_id(
    issuer: CertManagerPki, deployment: Deployment, tmp_path: Path
) -> None:
    """A renewal with a new key (rotationPolicy: Always) swapped in by ``..data``: the node
    takes it and activates again as the same node; a renewal to a key TLS cannot use is
    refused and the node keeps the certificate it has."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(issuer.ca_crt)
    link_secret = write_secret(
        tmp_path / "link-tls",
        issuer.issue("/CN=flwrmtls-link", KeySpec("RSA", 2048, "PKCS1"), server=True).files,
    )
    link = deployment.start_link(_link_args(link_secret, tmp_path / "link.db"))
    spec = KeySpec("ECDSA", 256, "PKCS1")
    secret = write_secret(tmp_path / "node-tls", issuer.issue(NODE_SUBJECT, spec).files)
    deployment.pki = _Roots(deployment.pki, secret / "ca.crt")  # type: ignore[assignment]
    node = _secret_node(deployment, "node-1", link.fleet_port, secret, tmp_path)
    first = node.wait_active()
    old_key = (secret / "tls.key").read_bytes()
    swap_secret(secret, issuer.issue(NODE_SUBJECT, KeySpec("RSA", 2048, "PKCS8")).files)
    assert (secret / "tls.key").read_bytes() != old_key
    node.wait_for("certificate changed: serial", timeout=30)
    node.wait_for(r"node active: node id \d+(.|\n)*node active: node id \d+", timeout=60)
    assert node.log.count(f"node active: node id {first},") == 2
    swap_secret(secret, issuer.issue(NODE_SUBJECT, KeySpec("ECDSA", 521, "PKCS8")).files)
    node.wait_for("certificate files changed but cannot be used, keeping the current", 30)
    assert "secp521r1" in node.log
    assert node.process is not None
    assert node.process.poll() is None


class _Roots:
    """The deployment's PKI with another CA bundle (the Secret's ca.crt) for nodes."""

    def __init__(self, pki: object, bundle: Path) -> None:
        self._pki = pki
        self.trust_bundle_path = bundle

    def __getattr__(self, name: str) -> object:
        return getattr(self._pki, name)


_WAIT_APP = {
    "pyproject.toml": """\
[project]
name = "waitapp"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "waitapp.server_app:app"
clientapp = "waitapp.client_app:app"

[tool.flwrmtls.app.config]
release-file = ""
arrays = 64
""",
    "waitapp/__init__.py": "",
    "waitapp/server_app.py": """\
from flwrmtls.app import ConfigRecord, MessageType, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    node = grid.wait_for_nodes(1, 60.0)[0]
    message = grid.create_message(
        RecordDict({"config": ConfigRecord({"n": 1})}), MessageType.QUERY, node, "wait"
    )
    (reply,) = grid.send_and_receive([message], timeout=120.0)
    if reply.has_error():
        raise SystemExit(f"error reply: {reply.error.reason}")
    print(f"reply with {len(reply.content['arrays'])} arrays", flush=True)
""",
    "waitapp/client_app.py": """\
import time
from pathlib import Path

import numpy as np

from flwrmtls.app import ArrayRecord, ClientApp, RecordDict

app = ClientApp()


@app.query()
def query(msg, context):
    release = Path(str(context.run_config["release-file"]))
    while not release.exists():
        time.sleep(0.05)
    print("replying", flush=True)
    count = int(context.run_config["arrays"])
    arrays = {f"a{i}": np.full(4, float(i), dtype=np.float32) for i in range(count)}
    return msg.create_reply(RecordDict({"arrays": ArrayRecord(arrays)}))
""",
}
"""A ClientApp that replies once the test writes its release file, with ``arrays`` arrays (so
its reply's first call on the link, MissingObjects, carries that many object ids)."""


def test_a_renewal_while_a_reply_is_on_its_way_costs_the_run_nothing(
    issuer: CertManagerPki, deployment: Deployment, tmp_path: Path
) -> None:
    """The attack on availability is the platform's own: cert-manager renews a node's Secret
    at a moment nobody picks. Here the moment is the worst one, picked rather than raced for:
    the ClientApp's reply is on its way to the link over the node's old connection (held in a
    relay) when the node takes the renewed certificate and activates again on a new one. The
    reply then reaches the link on a session the node itself superseded. Before: the node
    passed "session superseded" to the ClientApp (which died with it) and the run failed; now
    the node sends the reply again on its new session and the run completes."""
    link_secret = write_secret(
        tmp_path / "link-tls",
        issuer.issue("/CN=flwrmtls-link", KeySpec("ECDSA", 256, "PKCS8"), server=True).files,
    )
    # Heartbeats every 300 s: none falls inside the seconds the old connection is held.
    args = [*_link_args(link_secret, tmp_path / "link.db"), "--heartbeat-interval", "300"]
    link = deployment.start_link(args)
    spec = KeySpec("ECDSA", 256, "PKCS1")
    secret = write_secret(tmp_path / "node-tls", issuer.issue(NODE_SUBJECT, spec).files)
    deployment.pki = _Roots(deployment.pki, secret / "ca.crt")  # type: ignore[assignment]
    cli = write_secret(tmp_path / "cli-tls", issuer.issue("/role=operator/CN=alice", spec).files)
    added = deployment.cli(
        "config", "add", "cm", "--address", f"127.0.0.1:{link.control_port}",
        "--root-certificates", str(cli / "ca.crt"), "--client-certificate", str(cli / "tls.crt"),
        "--client-private-key", str(cli / "tls.key"), "--default",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    app = tmp_path / "app"
    for name, text in _WAIT_APP.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    release = tmp_path / "release"
    with relay_to(link.fleet_port) as relay:
        node = _secret_node(deployment, "node-1", relay.port, secret, tmp_path)
        first = node.wait_active()
        run = deployment.cli_process(
            "run", str(app), "--stream", "--run-config", f'release-file="{release}"'
        )
        node.wait_for(r"run 1: ClientApp process \d+ started", timeout=60)
        old = relay.hold_open("up")  # the node's connection now: its old certificate's
        release.touch()
        node.wait_for("run 1 ClientApp: replying", timeout=60)
        # The reply's MissingObjects (64 object ids) is in the relay, not at the link yet.
        deadline = time.monotonic() + 60
        while old.received < 64 * 64:
            assert time.monotonic() < deadline, f"{old.received} bytes of the reply held"
            time.sleep(0.05)
        swap_secret(secret, issuer.issue(NODE_SUBJECT, spec).files)
        node.wait_for(r"node active: node id \d+(.|\n)*node active: node id \d+", timeout=60)
        assert node.log.count(f"node active: node id {first},") == 2
        old.release()  # the reply reaches the link on the superseded session
        assert run.wait_exit(timeout=120) == 0, run.log[-3000:]
    assert "reply with 64 arrays" in run.log
    assert "Traceback" not in node.log
