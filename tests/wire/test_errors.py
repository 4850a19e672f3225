"""Lock in what grpcio reports for each handshake failure, through real connections.

If a grpcio upgrade changes these strings, these tests fail before users see
"check your network" instead of the cause.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.fleet.client import FleetClient
from flwrmtls.link.server import Link
from flwrmtls.pki import CertificateAuthority
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.errors import ConnectionContext


def activate(client: FleetClient, channel: grpc.Channel) -> None:
    try:
        client.activate()
    finally:
        channel.close()


def test_good_client_is_admitted(link: Link, pki: TestPki) -> None:
    chain, key = pki.paths("node-1")
    activate(*node_client(link, root_certificates=pki.trust_bundle_path, chain=chain, key=key))


def test_no_client_certificate(link: Link, pki: TestPki) -> None:
    with pytest.raises(Refused, match="requires a client certificate"):
        activate(*node_client(link, root_certificates=pki.trust_bundle_path))


def test_client_certificate_from_another_ca(link: Link, pki: TestPki, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger").issue_node("node-1")
    with pytest.raises(Refused, match="refused this client's certificate at the TLS handshake"):
        activate(
            *node_client(
                link,
                root_certificates=pki.trust_bundle_path,
                chain=stranger.chain_path,
                key=stranger.key_path,
            )
        )


def test_link_not_verified_by_client_roots(link: Link, pki: TestPki, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger")
    chain, key = pki.paths("node-1")
    with pytest.raises(Refused, match="certificate verify failed"):
        activate(
            *node_client(link, root_certificates=stranger.trust_bundle_path, chain=chain, key=key)
        )


def test_plaintext_client_against_tls_link(link: Link) -> None:
    address = f"127.0.0.1:{link.fleet_port}"
    channel = grpc.insecure_channel(address)
    ctx = ConnectionContext(address, tls=False, has_client_certificate=False, root_certificates="")
    with pytest.raises(Refused, match="probably requires TLS"):
        activate(FleetClient(channel, ctx), channel)


def test_nothing_listening(pki: TestPki) -> None:
    address = "127.0.0.1:1"
    channel = grpc.secure_channel(
        address, grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes())
    )
    ctx = ConnectionContext(address, tls=True, has_client_certificate=False, root_certificates="")
    with pytest.raises(LinkUnreachable, match="connection refused"):
        activate(FleetClient(channel, ctx), channel)


def as_dict(metadata: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in metadata or ()}


def test_a_refused_call_names_its_reason_in_trailing_metadata(link: Link, pki: TestPki) -> None:
    from flwrmtls.proto import control_pb2, control_pb2_grpc
    from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
    from flwrmtls.wire.metadata import REFUSAL_KEY

    def list_nodes(certificate: str) -> tuple[grpc.StatusCode, dict[str, str]]:
        identity = load_tls_identity(*pki.paths(certificate), cert_flag="c", key_flag="k")
        credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
        with grpc.secure_channel(f"127.0.0.1:{link.control_port}", credentials) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            try:
                _, call = stub.ListNodes.with_call(control_pb2.ListNodesRequest())
            except grpc.RpcError as error:
                return error.code(), as_dict(error.trailing_metadata())
            return call.code(), as_dict(call.trailing_metadata())

    code, trailer = list_nodes("node-1")  # a node certificate may not list nodes
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert trailer.get(REFUSAL_KEY) == "not-permitted"
    code, trailer = list_nodes("cli-operator")  # control
    assert code is grpc.StatusCode.OK
    assert REFUSAL_KEY not in trailer
