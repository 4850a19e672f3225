"""EC-key signatures bound to what they are for, through a real link on loopback.

* The bytes of an upload: a node signs the object it declares (content hash and size); a
  captured upload signature carries no other bytes, under no other object id.
* The link: a node signs for the server key it learns from its own TLS handshake; when the
  link's server certificate is rotated to a new key, its nodes re-learn it and keep working.
  (The replay of one link's signature to another is in tests/e2e/test_eckey.py, with a real
  node process and a malicious link.)

Each refusal beside its control: the honest call, through the node's own code, passes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.callsigning import (
    OBJECT_METADATA_KEY,
    CallSigner,
    audience_of,
    body_digest,
)
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.errors import InputError, LinkUnreachable, Refused
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.reload import TlsFiles
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.objects.store import CHUNK_SIZE, ObjectStore, object_id_of
from flwrmtls.objects.transfer import push_objects
from flwrmtls.pki import CertificateAuthority
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.testing.link import key_node_client, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import NodeProcess
from flwrmtls.wire.credentials import load_tls_identity
from flwrmtls.wire.metadata import REFUSAL_KEY

from .deployment import free_port

PUSH_OBJECT = "/flwrmtls.proto.Fleet/PushObject"


def key_link_config(
    tmp_path: Path, pki: TestPki, *, chain: Path | None = None, key: Path | None = None
) -> LinkConfig:
    """A link whose Fleet listener admits any EC-key node (server TLS only)."""
    server_chain, server_key = pki.paths("server")
    chain, key = chain or server_chain, key or server_key
    return LinkConfig(
        database=tmp_path / "link.db",
        fleet_address="127.0.0.1:0",
        control_address="127.0.0.1:0",
        serverappio_address="127.0.0.1:0",
        tls=load_tls_identity(chain, key, cert_flag="server", key_flag="key"),
        node_auth=NodeAuth.KEY,
        heartbeat_interval=1.0,
    )


def refusal_of(error: grpc.RpcError) -> str:
    trailers = {m.key: str(m.value) for m in error.trailing_metadata() or ()}
    return trailers.get(REFUSAL_KEY, "")


class _Capture(grpc.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    """Inside the node's signing interceptor: records what an upload would send, and stops
    it there (a signature captured on its way, never used by the node itself)."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ()

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        self.metadata = tuple(client_call_details.metadata)
        raise ConnectionAbortedError("captured")


def chunks(object_id: str, data: bytes, session_id: str) -> Iterator[objects_pb2.ObjectChunk]:
    for offset in range(0, len(data), CHUNK_SIZE):
        yield objects_pb2.ObjectChunk(
            object_id=object_id, total_size=len(data), offset=offset,
            data=data[offset : offset + CHUNK_SIZE], session_id=session_id,
        )  # fmt: skip


def test_a_captured_upload_signature_stores_no_other_bytes(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """As whoever captured a node's signed upload before the link saw it: it carries the
    declared object only; the node's own upload of that object is stored."""
    honest = b"the node's reply arrays" * 100_000  # three chunks
    forged = b"the attacker's arrays!!" * 1000
    honest_id, forged_id = object_id_of(honest), object_id_of(forged)
    with running_link(key_link_config(tmp_path, fresh_pki)) as link:
        key = ec.generate_private_key(ec.SECP384R1())
        roots = fresh_pki.trust_bundle_path
        client, signed = key_node_client(link, root_certificates=roots, key=key)
        session = client.activate()
        _, plain = node_client(link, root_certificates=roots)
        raw = fleet_pb2_grpc.FleetStub(plain)
        audience = LinkAudience(
            f"127.0.0.1:{link.fleet_port}", roots.read_bytes(), server_name="localhost"
        )

        def captured() -> tuple[tuple[str, str], ...]:
            """What the node's own code signs for uploading the honest object, not sent."""
            capture = _Capture()
            signing = SigningInterceptor(CallSigner(key), audience.current)
            channel = grpc.intercept_channel(grpc.intercept_channel(plain, capture), signing)
            with pytest.raises(ConnectionAbortedError):
                push_objects(
                    fleet_pb2_grpc.FleetStub(channel), {honest_id: honest},
                    session_id=session.session_id,
                )  # fmt: skip
            return capture.metadata

        def replayed(metadata: tuple[tuple[str, str], ...], stream: Iterator[Any]) -> str:
            with pytest.raises(grpc.RpcError) as refused:
                raw.PushObject(stream, metadata=metadata, timeout=30)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            return refusal_of(refused.value)

        # Other bytes under their own id, with the captured signature: refused, not stored.
        other = replayed(captured(), chunks(forged_id, forged, session.session_id))
        assert other == "bad-signature"
        # The declaration rewritten to name the other object: the signature does not cover it.
        rewritten = tuple(
            (name, f"{forged_id}:{len(forged)}" if name == OBJECT_METADATA_KEY else value)
            for name, value in captured()
        )
        assert replayed(rewritten, chunks(forged_id, forged, session.session_id)) == (
            "bad-signature"
        )
        # The honest object's first chunk, then another object's: refused at that chunk.
        mixed = [*chunks(honest_id, honest, session.session_id)]
        mixed[-1] = objects_pb2.ObjectChunk(
            object_id=forged_id, total_size=len(honest), offset=mixed[-1].offset,
            data=mixed[-1].data, session_id=session.session_id,
        )  # fmt: skip
        assert replayed(captured(), iter(mixed)) == "bad-signature"
        assert not link.objects.store.has(forged_id)
        assert not link.objects.store.has(honest_id)
        # An unsigned or undeclared upload on this listener: refused as well.
        unsigned = [(n, v) for n, v in captured() if n != OBJECT_METADATA_KEY]
        assert replayed(tuple(unsigned), chunks(honest_id, honest, session.session_id)) == (
            "bad-signature"
        )
        # Control: the node's own upload of the object it signed for is stored.
        store = ObjectStore(tmp_path / "node-objects")
        store.put(honest)
        client.send_objects(session, store, [honest_id])
        assert link.objects.store.has(honest_id)
        assert not link.objects.store.has(forged_id)
        signed.close()
        plain.close()


def replace_atomically(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staging)
    os.replace(staging, target)


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_link_whose_server_key_rotates_keeps_its_ec_key_nodes(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """cert-manager replaces the link's certificate and key: a real node re-learns the key
    when refused as wrong-audience and goes on; signatures for the old key end after the
    grace period."""
    live = tmp_path / "live"
    live.mkdir()
    chain, key = fresh_pki.paths("server")
    shutil.copyfile(chain, live / "server.pem")
    shutil.copyfile(key, live / "server.key")
    config = dataclasses.replace(
        key_link_config(tmp_path, fresh_pki, chain=live / "server.pem", key=live / "server.key"),
        tls_files=TlsFiles(live / "server.pem", live / "server.key", None),
        previous_server_key_grace=2.0,
    )
    node_key = tmp_path / "node.key"
    signing_key = ec.generate_private_key(ec.SECP256R1())
    node_key.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    node_key.chmod(0o600)
    with running_link(config) as link:
        old_audience = audience_of(load_tls_identity(chain, key, cert_flag="c", key_flag="k").leaf)
        node = NodeProcess(
            ["--superlink", f"127.0.0.1:{link.fleet_port}",
             "--root-certificates", str(fresh_pki.trust_bundle_path),
             "--auth-supernode-private-key", str(node_key),
             "--clientappio-api-address", "127.0.0.1:0"],
            tmp_path / "node.log", {"FLWRMTLS_HOME": str(tmp_path / "home")},
        )  # fmt: skip
        node.start()
        try:
            node_id = node.wait_active()
            rotated = fresh_pki.ca.issue_server("server-2")
            replace_atomically(rotated.key_path, live / "server.key")
            replace_atomically(rotated.chain_path, live / "server.pem")
            new_audience = audience_of(rotated.certificate)
            assert link.keys is not None
            keys = link.keys
            eventually(lambda: keys.audiences.current == new_audience, "the link's new key")
            node.wait_for("the link's server key changed", timeout=30)
            time.sleep(2.5)  # more heartbeats, now signed for the new key
            assert node.process is not None
            assert node.process.poll() is None, node.log
            assert "error" not in node.log.lower()
            online = link.state.list_nodes(now=datetime.now(UTC).timestamp())
            assert [n.status for n in online if n.node_id == node_id] == ["online"]
            # After the grace, a signature for the old key is refused (a fresh one, not a replay).
            _, plain = node_client(link, root_certificates=fresh_pki.trust_bundle_path)
            request = fleet_pb2.ActivateNodeRequest(node_version="test")
            now = datetime.now(UTC)
            old = CallSigner(signing_key).metadata(
                "/flwrmtls.proto.Fleet/ActivateNode", body_digest(request.SerializeToString()),
                now, old_audience,
            )  # fmt: skip
            with pytest.raises(grpc.RpcError) as refused:
                fleet_pb2_grpc.FleetStub(plain).ActivateNode(request, metadata=old, timeout=10)
            assert refusal_of(refused.value) == "wrong-audience"
            plain.close()
        finally:
            node.stop()


def test_a_node_learns_the_links_key_from_its_own_verified_handshake(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """The audience comes from the TLS layer, verified as grpc verifies the link: a link
    whose certificate the node's CA bundle does not verify, or that does not carry the
    address's name, teaches it nothing."""
    other_ca = CertificateAuthority.create(tmp_path / "other-ca", name="Other CA")
    with running_link(key_link_config(tmp_path, fresh_pki)) as link:
        address = f"127.0.0.1:{link.fleet_port}"
        roots = fresh_pki.trust_bundle_path.read_bytes()
        server = load_tls_identity(*fresh_pki.paths("server"), cert_flag="c", key_flag="k").leaf
        assert LinkAudience(address, roots).current() == audience_of(server)  # control
        with pytest.raises(Refused, match="certificate verify failed"):
            LinkAudience(address, other_ca.trust_bundle_path.read_bytes()).current()
        with pytest.raises(Refused, match="certificate verify failed"):
            LinkAudience(address, roots, server_name="link.example.org").current()
    with pytest.raises(LinkUnreachable, match="cannot reach the link"):
        LinkAudience(f"127.0.0.1:{free_port()}", roots).current()
    with pytest.raises(InputError, match="is not host:port"):
        LinkAudience("link.example.org", roots)
