"""The node hands every message it pulled to a ClientApp once, or answers it, or drops it only
with its run: through a real link, the node's real ClientAppIo, and the node's agent.

* A message delivered twice (an acknowledgement late or lost, the node activated again) is
  queued for its ClientApp once; once the ClientApp has it, a repeat is acknowledged again,
  never run again.
* A batch whose first message belongs to a run that ended loses nothing else: that message
  is dropped (the link says the run is over), the session goes on, and a message that cannot
  reach a ClientApp is answered with a LINK_ERROR error reply naming the cause instead of
  waiting for ever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flwrmtls.app.message import ErrorCode
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.node.agent import NodeAgent, RetryPolicy
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, fleet_pb2_grpc
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import node_client
from flwrmtls.testing.node import NodeLoop, serving_clientapps
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.errors import ConnectionContext

from ..fleet.test_rejections import Node, instruction, start_run


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ClientApps, NodeLoop]]:
    """A node's ClientApps served over ClientAppIo on their event loop."""
    channel = grpc.insecure_channel("127.0.0.1:1")  # the link is never called here
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    manager = ClientApps(client, ObjectStore(tmp_path / "objects"), node_config={})
    manager.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    try:
        with serving_clientapps(manager) as node:
            yield manager, node
    finally:
        channel.close()


def test_a_message_delivered_twice_reaches_its_clientapp_once(
    served: tuple[ClientApps, NodeLoop],
) -> None:
    apps, node = served
    run = node.call(apps.adopt, NodeRun(1, "0" * 64, {}))
    token = apps.tokens.issue(1, "clientapp")
    first = common_pb2.Message(message_id="m1", run_id=1)
    with grpc.insecure_channel(apps.clientappio_address) as io:
        stub = appio_pb2_grpc.ClientAppIoStub(io)

        def take() -> str:
            response = stub.PullMessage(
                appio_pb2.PullAppMessageRequest(wait_seconds=0),
                metadata=((TOKEN_METADATA_KEY, token),),
            )
            return str(response.message.message_id)

        node.call(apps.enqueue, run, first)
        node.call(apps.enqueue, run, first)  # the link handed it out again before it was taken
        assert node.call(apps.pending_acks) == []  # queued is not handed off
        assert take() == "m1"
        assert take() == ""  # once
        assert node.call(apps.pending_acks) == ["m1"]  # the next pull acknowledges it
        node.call(apps.acks_sent, ["m1"])
        assert node.call(apps.pending_acks) == []
        node.call(apps.enqueue, run, first)  # handed out again after it was taken (ack lost)
        assert take() == ""  # not run again ...
        assert node.call(apps.pending_acks) == ["m1"]  # ... but acknowledged again
        # Control: another message is queued and taken.
        node.call(apps.enqueue, run, common_pb2.Message(message_id="m2", run_id=1))
        assert take() == "m2"
        assert node.call(apps.pending_acks) == ["m1", "m2"]
    # A message of a run that ended here is dropped, and starts no process.
    node.call(apps.end_runs, [1])
    assert not node.run(apps.deliver(common_pb2.Message(message_id="m3", run_id=1)))
    assert node.call(apps.processes.get, 1) is None


def test_a_batch_led_by_an_ended_runs_message_loses_no_other_message(
    link: Link, pki: TestPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain, key = pki.paths("node-1")
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as appio:
        serverappio = appio_pb2_grpc.ServerAppIoStub(appio)
        node = Node(client, fleet_pb2_grpc.FleetStub(channel), client.activate())
        ended = start_run(link, serverappio)
        active = start_run(link, serverappio)  # its bundle is not on the link
        ended.push(instruction("m1", node))
        active.push(instruction("m2", node))
        link.state.runs.transition(ended.run_id, RunStatus.COMPLETED, "", 3.0)
        apps = ClientApps(client, ObjectStore(tmp_path / "objects"), node_config={})
        agent = NodeAgent(client, apps=apps, retry=RetryPolicy(max_retries=0))
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(agent.run())
            except Exception as error:  # reported below
                failed.append(error)

        caplog.set_level(logging.INFO)
        thread = threading.Thread(target=serve)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not active.replies() and not failed and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            agent.request_stop()
            thread.join(timeout=30)
            channel.close()
        answers = active.replies()
    assert not failed, failed
    [answer] = answers
    assert (answer.reply_to_message_id, answer.error.code) == (
        "m2", ErrorCode.LINK_ERROR
    )  # fmt: skip
    assert f"node {node.node_id}: cannot start the run's ClientApp" in answer.error.reason
    assert "no object" in answer.error.reason
    assert link.state.messages.replies_to(["m1"]) == {}  # its run is over: nothing to answer
    logged = [record.getMessage() for record in caplog.records]
    assert any(f"run {ended.run_id} is not active" in line for line in logged), logged
    assert not any("activating again" in line for line in logged), logged
