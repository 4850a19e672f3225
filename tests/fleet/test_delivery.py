"""At-least-once delivery with acknowledgement, through a real link (mTLS on loopback).

A message counts as delivered when its node acknowledges it, not when the link hands it out:
what a node pulled and did not acknowledge is handed out again after the lease and when the
node activates again; what it acknowledged, or what has a reply (the node's, or the error
reply the link made for a node that went offline), never is. A node acknowledges only its own
messages, and a refusal says why with a code the node reads, so that a run the node has no
work from never ends its session. Each attack sits beside its control.

The link runs on a clock that moves only when told (leases and heartbeat grace are minutes);
pulls therefore never wait (``wait=0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from flwrmtls.fleet.client import ObjectMissing, RunUnavailable, SessionEnded
from flwrmtls.fleet.servicer import DELIVERY_LEASE, MAX_ACKS
from flwrmtls.link.server import Link
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import appio_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.linkstate import HEARTBEAT_GRACE
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.metadata import REFUSAL_KEY

from .test_rejections import Node, ServerApp, instruction, refusal, reply, start_run

INTERVAL = 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def link(pki: TestPki, tmp_path: Path, clock: FakeClock) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key,
        client_ca=pki.trust_bundle_path, heartbeat_interval=INTERVAL,
    )  # fmt: skip
    with running_link(config, clock) as running:
        yield running


@pytest.fixture
def nodes(link: Link, pki: TestPki) -> Iterator[tuple[Node, Node]]:
    channels = []
    made = []
    for name in ("node-1", "node-2"):
        chain, key = pki.paths(name)
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        channels.append(channel)
        made.append(Node(client, fleet_pb2_grpc.FleetStub(channel), client.activate()))
    try:
        yield made[0], made[1]
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture
def serverappio(link: Link) -> Iterator[appio_pb2_grpc.ServerAppIoStub]:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        yield appio_pb2_grpc.ServerAppIoStub(channel)


def pull(node: Node, *acked: str) -> list[str]:
    """Message ids handed out to ``node`` now (acknowledging ``acked`` first)."""
    pulled = node.client.pull(node.session, wait=0, active_run_ids=[], acked=acked)
    assert pulled is not None
    return [m.message_id for m in pulled.messages]


def reactivate(node: Node) -> None:
    node.session = node.client.activate()


def test_a_batch_pulled_but_not_acknowledged_is_handed_out_again_after_the_lease(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub,
    clock: FakeClock,
) -> None:  # fmt: skip
    node, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node), instruction("m2", node))
    assert pull(node) == ["m1", "m2"]  # the batch is lost on its way to the ClientApps
    assert pull(node) == []  # leased
    clock.advance(DELIVERY_LEASE - 1)
    assert pull(node, "m1") == []  # m1 acknowledged; m2 still leased
    clock.advance(2)
    assert pull(node) == ["m2"]  # the lease passed: m2 again, never m1 (the control)
    clock.advance(DELIVERY_LEASE + 1)
    assert pull(node, "m2") == []
    clock.advance(DELIVERY_LEASE + 1)
    assert pull(node) == []


def test_what_a_node_did_not_acknowledge_is_handed_out_again_when_it_activates_again(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node), instruction("m2", node))
    assert pull(node) == ["m1", "m2"]
    assert pull(node, "m1") == []
    reactivate(node)  # e.g. the node crashed after its pull, and started again
    assert pull(node) == ["m2"]
    # An acknowledgement reaches the link whichever session carries it.
    reactivate(node)
    assert pull(node, "m2") == []
    reactivate(node)
    assert pull(node) == []


def test_a_node_cannot_acknowledge_another_nodes_messages(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, node_2 = nodes
    app_1 = start_run(link, serverappio)
    app_2 = start_run(link, serverappio)
    app_1.push(instruction("m1", node_1))
    app_2.push(instruction("m2", node_2))
    assert pull(node_1) == ["m1"]
    assert pull(node_2) == ["m2"]
    # Attack: node 2 acknowledges node 1's message, of a run node 2 is not part of, so that
    # node 1 never gets it again; and one of its own it never pulled is not the point.
    assert pull(node_2, "m1", "no-such-message") == []
    reactivate(node_1)
    assert pull(node_1) == ["m1"]  # still node 1's to take
    # Control: each node acknowledges its own.
    assert pull(node_1, "m1") == []
    assert pull(node_2, "m2") == []
    reactivate(node_1)
    reactivate(node_2)
    assert (pull(node_1), pull(node_2)) == ([], [])


def test_a_node_acknowledges_at_most_max_acks_per_pull(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node))
    assert pull(node) == ["m1"]
    too_many = [f"x{i}" for i in range(MAX_ACKS)] + ["m1"]
    request = fleet_pb2.PullMessagesRequest(
        session_id=node.session.session_id, acked_message_ids=too_many
    )
    code, details = refusal(lambda: node.stub.PullMessages(request))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ACKS} acknowledged messages per pull"
    )  # fmt: skip
    reactivate(node)
    assert pull(node, *too_many[-MAX_ACKS:]) == []  # control: within the bound, m1 counts
    reactivate(node)
    assert pull(node) == []


def test_a_message_the_link_answered_for_an_offline_node_is_never_handed_out_again(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub,
    clock: FakeClock,
) -> None:  # fmt: skip
    node_1, node_2 = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node_1), instruction("m2", node_2))
    assert pull(node_1) == ["m1"]
    assert pull(node_2) == ["m2"]
    clock.advance(HEARTBEAT_GRACE * INTERVAL + 1)  # both nodes went quiet
    node_2.client.heartbeat(node_2.session)  # node 2 is back in time; node 1 is not
    [error] = app.replies()  # the link answers for node 1
    assert (error.reply_to_message_id, error.error.code) == ("m1", 2)  # NODE_UNAVAILABLE
    reactivate(node_1)
    reactivate(node_2)
    assert pull(node_1) == []  # answered: not handed out again, though never acknowledged
    assert pull(node_2) == ["m2"]  # control: unanswered and unacknowledged, handed out again
    # A late reply of node 1 to what the link answered is dropped: one answer per message.
    node_1.push(reply("r1", "m1", node_1))
    node_2.push(reply("r2", "m2", node_2))
    assert [r.message_id for r in app.replies()] == [error.message_id, "r2"]


def test_a_second_reply_to_a_message_is_dropped(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    """A message handed out twice may be answered twice (two sessions of one node, or a
    ClientApp that ran it before the node forgot it): the ServerApp sees the first only."""
    node, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node), instruction("m2", node))
    assert pull(node) == ["m1", "m2"]
    reactivate(node)
    assert pull(node) == ["m1", "m2"]
    node.push(reply("first", "m1", node))
    node.push(reply("second", "m1", node))  # accepted, not stored
    node.push(reply("r2", "m2", node))
    assert [r.message_id for r in app.replies()] == ["first", "r2"]


def trailer(call: object) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        call()  # type: ignore[operator]
    trailers: Sequence[tuple[str, str]] = refused.value.trailing_metadata() or ()  # type: ignore[assignment]
    return next((str(value) for key, value in trailers if key == REFUSAL_KEY), "")


def test_a_run_with_no_work_for_the_node_does_not_end_its_session(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub,
    tmp_path: Path,
) -> None:  # fmt: skip
    node_1, node_2 = nodes
    mine: ServerApp = start_run(link, serverappio)
    theirs = start_run(link, serverappio)
    mine.push(instruction("m1", node_1))
    theirs.push(instruction("m2", node_2))
    client, session = node_1.client, node_1.session
    # Each NOT_FOUND says which one it is, and only the session's ends the session.
    with pytest.raises(RunUnavailable) as not_mine:
        client.get_run(session, theirs.run_id)
    assert not not_mine.value.ended
    with pytest.raises(RunUnavailable) as missing:
        client.get_run(session, 999)
    assert missing.value.ended
    assert trailer(lambda: node_1.get_run(theirs.run_id)) == "run-not-for-node"
    link.state.runs.transition(mine.run_id, RunStatus.COMPLETED, "", 3.0)
    with pytest.raises(RunUnavailable) as ended:
        client.get_run(session, mine.run_id)
    assert ended.value.ended
    with pytest.raises(ObjectMissing):
        client.fetch_object(session, "0" * 64, ObjectStore(tmp_path / "node-objects"))
    assert not isinstance(ended.value, SessionEnded)
    client.heartbeat(session)  # the session goes on
    assert node_2.client.get_run(node_2.session, theirs.run_id).run_id == theirs.run_id
    # Control: an unknown session, and a superseded one, do end it.
    stale = node_1.session
    reactivate(node_1)
    with pytest.raises(SessionEnded) as superseded:
        client.heartbeat(stale)
    assert superseded.value.superseded
    client.deactivate(node_1.session)
    with pytest.raises(SessionEnded) as unknown:
        client.heartbeat(node_1.session)
    assert not unknown.value.superseded
    assert (
        trailer(
            lambda: node_1.stub.Heartbeat(fleet_pb2.HeartbeatRequest(session_id="no-such-session"))
        )
        == "unknown-session"
    )


def test_pulling_with_acknowledgements_is_refused_to_a_stale_session(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    """An acknowledgement rides on a pull, so a session that is not the node's newest cannot
    acknowledge anything: the refusal comes before the acknowledgement is applied."""
    node, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node))
    assert pull(node) == ["m1"]
    stale = node.session
    reactivate(node)
    code, _ = refusal(
        lambda: node.stub.PullMessages(
            fleet_pb2.PullMessagesRequest(session_id=stale.session_id, acked_message_ids=["m1"])
        )
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert pull(node) == ["m1"]  # not acknowledged by the stale session
