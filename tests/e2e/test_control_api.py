"""The Control API is never anonymous off loopback, and only the CLI's CA makes operators.

Through a real link (in this process, real gRPC over TLS on loopback), as the attacker each
check answers, beside the legitimate caller that passes:

* anyone reaching Control of an EC-key link (nodes without certificates) that was given a CLI
  CA bundle is refused at the handshake; an operator certificate from that CA is served;
* a CA trusted for nodes cannot mint operators once the CLI has its own CA bundle;
* a second CA of the client bundle cannot alias a node's Subject (node id) or an operator's
  Subject (runs, roles); the owner's reissued certificate, and a successor root cross-signed by
  the old one, keep the identity;
* a node certificate refused on Control is told what to do.

Starting a link whose Control would be anonymous off loopback is refused in
tests/e2e/test_startup_errors.py; the flag logic is tested here on the parsed flags.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.connectionprofiles import Profile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import FlwrmtlsError, HandshakeClosed, InputError, Refused
from flwrmtls.fleet.client import FleetClient
from flwrmtls.link import main as link_main
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.configure import config_from_args
from flwrmtls.link.reload import TlsFiles
from flwrmtls.link.server import Link
from flwrmtls.pki import CertificateAuthority
from flwrmtls.pki.certsigning import pem_bundle
from flwrmtls.testing.link import node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import load_ca_bundle, load_tls_identity

OPERATOR = "role=operator,CN=cli-operator"


def link_config(
    pki: TestPki,
    tmp_path: Path,
    *,
    client_ca: Path | None,
    cli_ca: Path | None = None,
    node_auth: NodeAuth = NodeAuth.CERTIFICATE,
) -> LinkConfig:
    chain, key = pki.paths("server")
    client_pem, client_cas = load_ca_bundle(client_ca, "client") if client_ca else (None, [])
    cli_pem, cli_cas = load_ca_bundle(cli_ca, "cli") if cli_ca else (None, [])
    return LinkConfig(
        database=tmp_path / "link.db",
        fleet_address="127.0.0.1:0",
        control_address="127.0.0.1:0",
        serverappio_address="127.0.0.1:0",
        tls=load_tls_identity(chain, key, cert_flag="server", key_flag="key"),
        client_ca_pem=client_pem,
        client_ca_certificates=client_cas,
        require_client_auth=client_ca is not None,
        cli_ca_pem=cli_pem,
        cli_ca_certificates=cli_cas,
        node_auth=node_auth,
        enable_supernode_auth=node_auth is NodeAuth.KEY,
    )


@contextmanager
def control(
    link: Link, roots: Path, chain: Path | None, key: Path | None
) -> Iterator[ControlClient]:
    profile = Profile(
        "test", f"127.0.0.1:{link.control_port}", roots, client_certificate=chain,
        client_private_key=key,
    )  # fmt: skip
    client = ControlClient(profile, "config.toml")
    try:
        yield client
    finally:
        client._channel.close()


def list_error(client: ControlClient) -> str:
    with pytest.raises(FlwrmtlsError) as refused:
        client.list_nodes()
    return str(refused.value)


@contextmanager
def fleet(link: Link, roots: Path, chain: Path) -> Iterator[FleetClient]:
    client, channel = node_client(
        link, root_certificates=roots, chain=chain, key=chain.with_suffix(".key")
    )
    try:
        yield client
    finally:
        channel.close()


def test_an_ec_key_link_with_a_cli_ca_refuses_anonymous_control_callers(
    pki: TestPki, tmp_path: Path
) -> None:
    config = link_config(
        pki, tmp_path, client_ca=None, cli_ca=pki.trust_bundle_path, node_auth=NodeAuth.KEY
    )
    with running_link(config) as link:
        with control(link, pki.trust_bundle_path, None, None) as anonymous:
            message = list_error(anonymous)
            assert "requires a client certificate" in message, message
        with control(link, pki.trust_bundle_path, *pki.paths("cli-operator")) as operator:
            assert operator.list_nodes() == []


def test_a_node_ca_cannot_mint_operators_when_the_cli_has_its_own_ca(
    pki: TestPki, tmp_path: Path
) -> None:
    cli_ca = CertificateAuthority.create(tmp_path / "cli-ca", name="cli")
    admin = cli_ca.issue_cli("admin", role="operator")
    config = link_config(
        pki, tmp_path, client_ca=pki.trust_bundle_path, cli_ca=cli_ca.trust_bundle_path
    )
    roots = tmp_path / "roots.pem"  # the link's server certificate comes from the node CA
    roots.write_bytes(pki.trust_bundle_path.read_bytes())
    with running_link(config) as link:
        # The node CA's operator certificate (an attacker with that CA mints one): refused.
        with control(link, roots, *pki.paths("cli-operator")) as minted:
            assert "it may have refused this certificate" in list_error(minted)
        with control(link, roots, admin.chain_path, admin.key_path) as operator:
            assert operator.list_nodes() == []
        # Nodes of the node CA still join; the CLI CA's certificate is no node.
        with fleet(link, roots, pki.paths("node-1")[0]) as node:
            assert node.activate().identity == "CN=node-1,O=Hospital A"
        with (
            fleet(link, roots, admin.chain_path) as not_a_node,
            pytest.raises(HandshakeClosed, match="it may have refused this certificate"),
        ):
            not_a_node.activate()


def test_a_second_ca_cannot_alias_a_node_but_a_cross_signed_successor_can(
    fresh_pki: TestPki, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    successor = CertificateAuthority.create(tmp_path / "successor")
    cross = fresh_pki.ca.cross_sign(successor.root_certificate)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        pem_bundle(
            fresh_pki.ca.root_certificate, other.root_certificate,
            successor.root_certificate, cross,
        )
    )  # fmt: skip
    alias = other.issue_node("node-1", organization="Hospital A")
    renewed = successor.issue_node("node-1", organization="Hospital A")
    roots = fresh_pki.trust_bundle_path
    with running_link(link_config(fresh_pki, tmp_path, client_ca=bundle)) as link:
        with fleet(link, roots, fresh_pki.paths("node-1")[0]) as genuine:
            node_id = genuine.activate().node_id
        with fleet(link, roots, alias.chain_path) as attacker, pytest.raises(Refused) as refused:
            attacker.activate()
        assert "belongs to the CA" in str(refused.value)
        with fleet(link, roots, renewed.chain_path) as rolled_over:
            assert rolled_over.activate().node_id == node_id
        assert link.state.pins.get("CN=node-1,O=Hospital A") is not None


def test_a_second_ca_cannot_alias_an_operator(pki: TestPki, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    alias = other.issue_cli("cli-operator", role="operator")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem_bundle(pki.ca.root_certificate, other.root_certificate))
    with running_link(link_config(pki, tmp_path, client_ca=bundle)) as link:
        with control(link, pki.trust_bundle_path, *pki.paths("cli-operator")) as operator:
            assert operator.list_nodes() == []
        with control(link, pki.trust_bundle_path, alias.chain_path, alias.key_path) as aliased:
            message = list_error(aliased)
        assert f"identity {OPERATOR!r} belongs to the CA" in message, message


def test_a_node_certificate_on_control_is_told_what_to_do(pki: TestPki, tmp_path: Path) -> None:
    with running_link(link_config(pki, tmp_path, client_ca=pki.trust_bundle_path)) as link:
        with control(link, pki.trust_bundle_path, *pki.paths("node-1")) as node:
            message = list_error(node)
        assert "may not call ListNodes" in message
        assert "flwrmtls ca issue cli NAME --role operator" in message
        assert "--cli-role-source ou" in message
        with control(link, pki.trust_bundle_path, *pki.paths("cli-operator")) as operator:
            assert operator.list_nodes() == []


def _config(args: list[str]) -> LinkConfig:
    return config_from_args(link_main.parser().parse_args(args))


@pytest.mark.parametrize("address", ["0.0.0.0:9093", "[::]:9093", "10.1.2.3:9093", ":9093"])
def test_control_off_loopback_needs_cli_certificates(
    pki: TestPki, tmp_path: Path, address: str
) -> None:
    chain, key = pki.paths("server")
    tls = ["--ssl-certfile", str(chain), "--ssl-keyfile", str(key), "--database",
           str(tmp_path / "link.db"), "--control-api-address", address]  # fmt: skip
    with pytest.raises(InputError, match="give --ssl-cli-ca-certfile"):
        _config(tls)
    # Each way out: a CLI CA bundle, client certificates for all, or the loud opt-out.
    assert _config(
        [*tls, "--ssl-cli-ca-certfile", str(pki.trust_bundle_path)]
    ).control_authenticates
    assert _config(
        [*tls, "--ssl-require-client-auth", "--ssl-ca-certfile", str(pki.trust_bundle_path)]
    ).control_authenticates
    opted_out = _config([*tls, "--unsafe-anonymous-control-api"])
    assert opted_out.anonymous_control
    assert not opted_out.control_authenticates


@pytest.mark.parametrize("address", ["127.0.0.1:9093", "localhost:9093", "[::1]:9093"])
def test_control_on_loopback_may_stay_anonymous(pki: TestPki, tmp_path: Path, address: str) -> None:
    chain, key = pki.paths("server")
    config = _config(
        ["--ssl-certfile", str(chain), "--ssl-keyfile", str(key), "--database",
         str(tmp_path / "link.db"), "--control-api-address", address]
    )  # fmt: skip
    assert not config.control_authenticates


def test_a_cli_ca_bundle_that_drops_a_ca_refuses_its_operators_on_the_next_call(
    pki: TestPki, tmp_path: Path
) -> None:
    cli_bundle = tmp_path / "cli-ca.pem"
    cli_bundle.write_bytes(pki.trust_bundle_path.read_bytes())
    config = link_config(pki, tmp_path, client_ca=None, cli_ca=cli_bundle, node_auth=NodeAuth.KEY)
    chain, key = pki.paths("server")
    config.tls_files = TlsFiles(chain, key, client_ca=None, cli_ca=cli_bundle)
    successor = CertificateAuthority.create(tmp_path / "successor", name="cli")
    admin = successor.issue_cli("admin", role="operator")
    with running_link(config) as link:
        with control(link, pki.trust_bundle_path, *pki.paths("cli-operator")) as operator:
            assert operator.list_nodes() == []
            cli_bundle.write_bytes(successor.trust_bundle_path.read_bytes())
            deadline = time.monotonic() + 20
            refusal = ""
            while not refusal and time.monotonic() < deadline:
                try:
                    operator.list_nodes()
                    time.sleep(0.2)
                except Refused as error:
                    refusal = str(error)
            assert "not signed by a trusted CA" in refusal, "the dropped CA's operator was served"
        with control(link, pki.trust_bundle_path, admin.chain_path, admin.key_path) as new:
            assert new.list_nodes() == []
