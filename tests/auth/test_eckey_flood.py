"""As anyone on the network, against the EC-key listener of a real link: a key the link does not
accept leaves nothing in its replay memory, and a timestamp far ahead is refused, while a
registered node beside the flood keeps working. Real TLS, real gRPC clients signing calls as a
node does (flwrmtls.node.signer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.callsigning import CallSigner
from flwrmtls.auth.keyformats import key_fingerprint, node_id_for_key, public_key_der
from flwrmtls.clock import SystemClock
from flwrmtls.link.server import Link
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki


class ClockAhead(SystemClock):
    """A node whose clock runs ``seconds`` fast."""

    def __init__(self, seconds: float) -> None:
        self._ahead = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return super().now() + self._ahead


@pytest.fixture
def key_link(pki: TestPki, tmp_path: Path) -> Iterator[Link]:
    """A link whose second Fleet listener admits registered EC keys (CLI-managed mode)."""
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    config = replace(config, key_fleet_address="127.0.0.1:0", enable_supernode_auth=True)
    with running_link(config) as link:
        yield link


def key_stub(
    link: Link, pki: TestPki, key: ec.EllipticCurvePrivateKey, clock: SystemClock
) -> tuple[fleet_pb2_grpc.FleetStub, grpc.Channel]:
    channel = grpc.secure_channel(
        f"127.0.0.1:{link.key_fleet_port}",
        grpc.ssl_channel_credentials(root_certificates=pki.trust_bundle_path.read_bytes()),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    audience = LinkAudience(
        f"127.0.0.1:{link.key_fleet_port}", pki.trust_bundle_path.read_bytes(),
        server_name="localhost",
    )  # fmt: skip
    interceptor = SigningInterceptor(CallSigner(key), audience.current, clock)
    signed = grpc.intercept_channel(channel, interceptor)
    return fleet_pb2_grpc.FleetStub(signed), channel


def register(link: Link, key: ec.EllipticCurvePrivateKey) -> None:
    link.state.keys.register(
        public_key_der(key), node_id=node_id_for_key(key), fingerprint=key_fingerprint(key),
        by="test", now=time.time() - 1,
    )  # fmt: skip


def test_an_unregistered_keys_flood_at_the_future_edge_is_not_remembered(
    key_link: Link, pki: TestPki
) -> None:
    honest_key = ec.generate_private_key(ec.SECP384R1())
    register(key_link, honest_key)
    honest, honest_channel = key_stub(key_link, pki, honest_key, SystemClock())
    session = honest.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=10)
    attacker, attacker_channel = key_stub(
        key_link, pki, ec.generate_private_key(ec.SECP256R1()), ClockAhead(4.5)
    )
    heartbeat = fleet_pb2.HeartbeatRequest(session_id=session.session_id)
    refused = []
    for _ in range(100):
        with pytest.raises(grpc.RpcError) as caught:
            attacker.Heartbeat(heartbeat, timeout=10)
        refused.append(caught.value.code())
    # Refused as unregistered (or, once the address is over its failure budget, told to wait).
    assert set(refused) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}
    assert refused[0] is grpc.StatusCode.UNAUTHENTICATED
    assert key_link.keys is not None
    assert key_link.keys.remembered_nonces == 1  # the honest node's ActivateNode only
    # Control: the registered node goes on, and each of its calls is remembered.
    honest.Heartbeat(heartbeat, timeout=10)
    assert key_link.keys.remembered_nonces == 2
    honest_channel.close()
    attacker_channel.close()


def test_a_timestamp_far_ahead_is_refused_and_a_few_seconds_ahead_is_not(
    key_link: Link, pki: TestPki
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    register(key_link, key)
    ahead, ahead_channel = key_stub(key_link, pki, key, ClockAhead(30))
    with pytest.raises(grpc.RpcError) as caught:
        ahead.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "too far ahead" in str(caught.value.details())
    assert "5.0 s ahead" in str(caught.value.details())
    slightly, slightly_channel = key_stub(key_link, pki, key, ClockAhead(2))
    slightly.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=10)  # control
    ahead_channel.close()
    slightly_channel.close()


def test_a_flood_of_bad_signatures_from_one_address_is_cut_off_before_parsing(
    key_link: Link, pki: TestPki
) -> None:
    """A fresh key per call made the link parse a key and verify a signature every time.
    Now the address's failure budget (50 at once, 5 a second) runs out and its calls are
    refused before anything is parsed: the count of keys the link parsed stops growing. A node
    that authenticated from the same address before keeps working."""
    honest_key = ec.generate_private_key(ec.SECP384R1())
    register(key_link, honest_key)
    honest, honest_channel = key_stub(key_link, pki, honest_key, SystemClock())
    session = honest.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=10)
    heartbeat = fleet_pb2.HeartbeatRequest(session_id=session.session_id)
    assert key_link.keys is not None
    parsed_before = key_link.keys.cached_keys
    codes = []
    for _ in range(300):
        flooder, channel = key_stub(
            key_link, pki, ec.generate_private_key(ec.SECP256R1()), SystemClock()
        )
        with pytest.raises(grpc.RpcError) as caught:
            flooder.Heartbeat(heartbeat, timeout=10)
        codes.append((caught.value.code(), str(caught.value.details())))
        channel.close()
        honest.Heartbeat(heartbeat, timeout=10)  # control: the proven node is never refused
    parsed = key_link.keys.cached_keys - parsed_before
    assert codes[0][0] is grpc.StatusCode.UNAUTHENTICATED
    limited = [details for code, details in codes if code is grpc.StatusCode.UNAVAILABLE]
    assert limited, "the flood was never cut off"
    assert limited[0].startswith("too many failed authentications from ipv4:127.0.0.1: retry in")
    assert parsed == len(codes) - len(limited)  # what was refused early was never parsed
    assert parsed < 150  # 50 at once, then what 5 a second brought back
    honest_channel.close()


def test_a_fresh_key_per_refused_call_does_not_write_an_audit_entry_per_call(
    key_link: Link, pki: TestPki
) -> None:
    """Refusals were de-duplicated by the caller's own key fingerprint only, so a fresh key
    per call wrote a new entry each time. Now each address has 10 reports per 10 minutes."""
    for _ in range(40):  # under the failure budget: every call is verified and refused
        flooder, channel = key_stub(
            key_link, pki, ec.generate_private_key(ec.SECP256R1()), SystemClock()
        )
        with pytest.raises(grpc.RpcError) as caught:
            flooder.Heartbeat(fleet_pb2.HeartbeatRequest(), timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        channel.close()
    entries = [entry.record for entry in key_link.state.audit.entries(1000)]
    refused = [r for r in entries if r.outcome == "unregistered-key"]
    assert len(refused) == 10
    assert {r.peer.rsplit(":", 1)[0] for r in refused} == {"ipv4:127.0.0.1"}
    # Control: a registered node's admission is recorded, beside the capped refusals.
    honest_key = ec.generate_private_key(ec.SECP384R1())
    register(key_link, honest_key)
    honest, honest_channel = key_stub(key_link, pki, honest_key, SystemClock())
    honest.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=10)
    [admission] = [
        entry.record for entry in key_link.state.audit.entries(1000)
        if entry.record.method.endswith("/ActivateNode")
    ]  # fmt: skip
    assert (admission.identity, admission.outcome) == (key_fingerprint(honest_key), "ok")
    honest_channel.close()
