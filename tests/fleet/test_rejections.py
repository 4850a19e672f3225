"""A node acts only as itself and only on its own work; a ServerApp only on its own run.

Through a real link (mTLS on loopback) with two real node certificates and a real run token:
each attack is refused beside its legitimate control, and what was refused left nothing
behind (the ServerApp receives only the legitimate replies).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki


@dataclass
class Node:
    client: FleetClient
    stub: fleet_pb2_grpc.FleetStub
    session: Session

    @property
    def node_id(self) -> int:
        return self.session.node_id

    def push(self, *replies: common_pb2.Message) -> None:
        self.stub.PushMessages(
            fleet_pb2.PushMessagesRequest(session_id=self.session.session_id, messages=replies)
        )

    def get_run(self, run_id: int) -> fleet_pb2.GetRunResponse:
        response: fleet_pb2.GetRunResponse = self.stub.GetRun(
            fleet_pb2.GetRunRequest(session_id=self.session.session_id, run_id=run_id)
        )
        return response


@dataclass
class ServerApp:
    run_id: int
    stub: appio_pb2_grpc.ServerAppIoStub
    metadata: tuple[tuple[str, str]]

    def push(self, *messages: common_pb2.Message) -> list[str]:
        request = appio_pb2.PushAppMessagesRequest(messages=messages)
        return list(self.stub.PushMessages(request, metadata=self.metadata).message_ids)

    def replies(self) -> list[common_pb2.Message]:
        request = appio_pb2.PullRepliesRequest(wait_seconds=0)
        return list(self.stub.PullReplies(request, metadata=self.metadata).replies)


def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()  # type: ignore[operator]
    return refused.value.code(), refused.value.details() or ""


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


def start_run(link: Link, stub: appio_pb2_grpc.ServerAppIoStub) -> ServerApp:
    """A running run and its ServerApp's token, as the link's run manager makes them."""
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    runs.add_token(token_hash(token), run_id, "serverapp")
    return ServerApp(run_id, stub, ((TOKEN_METADATA_KEY, token),))


def instruction(message_id: str, node: Node, run_id: int = 0) -> common_pb2.Message:
    return common_pb2.Message(message_id=message_id, dst_node_id=node.node_id, run_id=run_id)


def reply(message_id: str, to: str, src: Node | int) -> common_pb2.Message:
    src_node_id = src if isinstance(src, int) else src.node_id
    return common_pb2.Message(
        message_id=message_id, reply_to_message_id=to, src_node_id=src_node_id
    )


def pulled(node: Node) -> list[str]:
    pulled = node.client.pull(node.session, wait=1, active_run_ids=[])
    assert pulled is not None
    return [m.message_id for m in pulled.messages]


def test_a_node_cannot_reply_as_another_node(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, node_2 = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node_1))
    assert pulled(node_1) == ["m1"]
    # Attack: node 1 answers its own message but claims to be node 2.
    code, details = refusal(lambda: node_1.push(reply("r1", "m1", node_2)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert f"claims source node {node_2.node_id}" in details
    assert app.replies() == []
    # Control: the same reply under its own node id is accepted and stamped with its identity.
    node_1.push(reply("r1", "m1", node_1))
    [accepted] = app.replies()
    assert (accepted.message_id, accepted.src_node_id) == ("r1", node_1.node_id)
    assert accepted.src_identity == "CN=node-1,O=Hospital A"


def test_a_node_cannot_reply_to_a_message_sent_to_another_node(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, node_2 = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node_1), instruction("m2", node_2))
    assert pulled(node_1) == ["m1"]
    assert pulled(node_2) == ["m2"]
    # Attacks: node 1, as itself, answers node 2's message, or one that does not exist.
    for target in ("m2", "no-such-message"):
        code, details = refusal(lambda target=target: node_1.push(reply("r", target, node_1)))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert "which was not sent to this node" in details
    # One bad reply in a push refuses the whole push: node 1's honest reply in it is not kept.
    code, _ = refusal(lambda: node_1.push(reply("r1", "m1", node_1), reply("r", "m2", node_1)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert app.replies() == []
    # Controls: each node answers its own message.
    node_2.push(reply("r2", "m2", node_2))
    node_1.push(reply("r1", "m1", node_1))
    assert {(r.reply_to_message_id, r.src_node_id) for r in app.replies()} == {
        ("m1", node_1.node_id),
        ("m2", node_2.node_id),
    }


def test_a_node_cannot_get_a_run_that_sent_it_no_work(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, node_2 = nodes
    app_1 = start_run(link, serverappio)
    app_2 = start_run(link, serverappio)
    app_1.push(instruction("m1", node_1))
    app_2.push(instruction("m2", node_2))
    # Attack: node 1 asks for run 2 (bundle hash, config), which only sent work to node 2.
    code, other_run = refusal(lambda: node_1.get_run(app_2.run_id))
    assert (code, other_run) == (
        grpc.StatusCode.NOT_FOUND, f"run {app_2.run_id} has no work for this node"
    )  # fmt: skip
    # ... and learns nothing a pull does not tell any node (which runs are active): a run
    # that does not exist reads as one that ended, as both do in a pull's ended_run_ids.
    app_3 = start_run(link, serverappio)
    app_3.push(instruction("m3", node_1))
    link.state.runs.transition(app_3.run_id, RunStatus.COMPLETED, "", 3.0)
    code, ended_run = refusal(lambda: node_1.get_run(app_3.run_id))
    assert code is grpc.StatusCode.NOT_FOUND
    code, missing_run = refusal(lambda: node_1.get_run(999))
    assert code is grpc.StatusCode.NOT_FOUND
    assert ended_run.replace(str(app_3.run_id), "N") == missing_run.replace("999", "N")
    told = node_1.client.pull(
        node_1.session, wait=0, active_run_ids=[app_2.run_id, app_3.run_id, 999]
    )
    assert told is not None
    assert told.ended_run_ids == [app_3.run_id, 999]
    # Controls: each node gets the run that sent it work.
    assert node_1.get_run(app_1.run_id).run_id == app_1.run_id
    assert node_2.get_run(app_2.run_id).run_id == app_2.run_id


def test_a_serverapp_cannot_push_a_message_naming_another_run(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, _ = nodes
    app_1 = start_run(link, serverappio)
    app_2 = start_run(link, serverappio)
    # Attack: run 1's ServerApp pushes a message that names run 2 (for instance to make
    # node 1 fetch run 2's bundle and config, or to answer into run 2's replies).
    code, details = refusal(lambda: app_1.push(instruction("m1", node_1, run_id=app_2.run_id)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"names run {app_2.run_id}" in details
    assert pulled(node_1) == []
    code, _ = refusal(lambda: node_1.get_run(app_2.run_id))
    assert code is grpc.StatusCode.NOT_FOUND
    # Controls: naming its own run, or none (0), is accepted and stamped with its own run.
    app_1.push(instruction("m1", node_1, run_id=app_1.run_id), instruction("m2", node_1))
    both = node_1.client.pull(node_1.session, wait=5, active_run_ids=[])
    assert both is not None
    assert {(m.message_id, m.run_id) for m in both.messages} == {
        ("m1", app_1.run_id),
        ("m2", app_1.run_id),
    }
    assert node_1.get_run(app_1.run_id).run_id == app_1.run_id


def test_a_node_cannot_reuse_a_message_id(
    link: Link, nodes: tuple[Node, Node], serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    node_1, _ = nodes
    app = start_run(link, serverappio)
    app.push(instruction("m1", node_1), instruction("m2", node_1))
    assert sorted(pulled(node_1)) == ["m1", "m2"]
    # Attack: a reply whose id is another stored message's (here, an instruction's).
    code, details = refusal(lambda: node_1.push(reply("m2", "m1", node_1)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "already used" in details
    code, _ = refusal(lambda: node_1.push(reply("r", "m1", node_1), reply("r", "m2", node_1)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert app.replies() == []
    # Control: distinct ids; a repeated push of an answered reply is ignored, not stored twice.
    node_1.push(reply("r1", "m1", node_1), reply("r2", "m2", node_1))
    node_1.push(reply("r1", "m1", node_1))
    assert sorted(r.message_id for r in app.replies()) == ["r1", "r2"]
