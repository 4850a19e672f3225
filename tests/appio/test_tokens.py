"""App-process tokens: only the right token of a live run works, on its own API.

Missing, wrong, other-run, ended-run and wrong-kind tokens each fail beside the negative
control where the right token passes. Real gRPC servers on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.node import serving_clientapps
from flwrmtls.wire.errors import ConnectionContext


def md(token: str) -> tuple[tuple[str, str]]:
    return ((TOKEN_METADATA_KEY, token),)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = caught.value.code()
    return code


def start_run(link: Link) -> tuple[int, str]:
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    runs.add_token(token_hash(token), run_id, "serverapp")
    return run_id, token


def test_serverappio_tokens(link: Link, tmp_path: Path) -> None:
    run_a, token_a = start_run(link)
    run_b, token_b = start_run(link)
    link.state.messages.store(
        [MessageRow("msg-b", run_b, 0, 7, "", 1.0, 1e12, common_pb2.Message().SerializeToString())]
    )
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        stub = appio_pb2_grpc.ServerAppIoStub(channel)
        get_run = appio_pb2.GetAppRunRequest()
        # The right token works, and names its own run.
        assert stub.GetRun(get_run, metadata=md(token_a)).run_id == run_a
        assert stub.GetRun(get_run, metadata=md(token_b)).run_id == run_b
        # Missing and wrong tokens.
        assert code_of(lambda: stub.GetRun(get_run)) is grpc.StatusCode.UNAUTHENTICATED
        wrong = new_token()
        assert code_of(lambda: stub.GetRun(get_run, metadata=md(wrong))) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # Run A's token cannot reach run B's replies: replies are scoped to the token's run.
        pull = appio_pb2.PullRepliesRequest(wait_seconds=0.2)
        assert list(stub.PullReplies(pull, metadata=md(token_a)).replies) == []
        [reply] = stub.PullReplies(pull, metadata=md(token_b)).replies  # control
        assert reply.reply_to_message_id == "msg-b"
        assert "not known to the link" in reply.error.reason
        # A token stops working when its run ends.
        link.state.runs.transition(run_a, RunStatus.COMPLETED, "", 3.0)
        assert code_of(lambda: stub.GetRun(get_run, metadata=md(token_a))) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # A ClientApp-kind token is not a ServerApp's, even for a live run.
        clientapp_token = new_token()
        link.state.runs.add_token(token_hash(clientapp_token), run_b, "clientapp")
        assert code_of(lambda: stub.GetRun(get_run, metadata=md(clientapp_token))) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
    # Only hashes are stored: the token text is nowhere in the database file.
    database = Path(link.config.database).read_bytes()
    wal = Path(f"{link.config.database}-wal")
    stored = database + (wal.read_bytes() if wal.exists() else b"")
    assert token_b.encode() not in stored
    assert hashlib.sha256(token_b.encode()).digest() in stored


def test_clientappio_tokens(tmp_path: Path) -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")  # the link is never called here
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    apps = ClientApps(client, ObjectStore(tmp_path / "objects"), node_config={"name": "a"})
    apps.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    apps.adopt(NodeRun(1, "0" * 64, {"lr": 0.1}))
    run_2 = apps.adopt(NodeRun(2, "1" * 64, {}))
    token_1 = apps.tokens.issue(1, "clientapp")
    token_2 = apps.tokens.issue(2, "clientapp")
    try:
        with (
            serving_clientapps(apps) as node,
            grpc.insecure_channel(apps.clientappio_address) as io,
        ):
            stub = appio_pb2_grpc.ClientAppIoStub(io)
            get_run = appio_pb2.GetAppRunRequest()
            info = stub.GetRun(get_run, metadata=md(token_1))
            assert (info.run_id, info.node_id) == (1, 5)
            assert stub.GetRun(get_run, metadata=md(token_2)).run_id == 2
            assert code_of(lambda: stub.GetRun(get_run)) is grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: stub.GetRun(get_run, metadata=md(new_token()))) is (
                grpc.StatusCode.UNAUTHENTICATED
            )
            # Run 1's token cannot answer a message of run 2.
            node.call(apps.enqueue, run_2, common_pb2.Message(message_id="m2", run_id=2))
            reply = common_pb2.Message(message_id="r", reply_to_message_id="m2")
            assert (
                code_of(
                    lambda: stub.PushReply(
                        appio_pb2.PushReplyRequest(reply=reply), metadata=md(token_1)
                    )
                )
                is grpc.StatusCode.PERMISSION_DENIED
            )
            # Ended run: its token stops working; the other run's still works (control).
            node.call(apps.end_runs, [1])
            assert code_of(lambda: stub.GetRun(get_run, metadata=md(token_1))) is (
                grpc.StatusCode.UNAUTHENTICATED
            )
            assert stub.GetRun(get_run, metadata=md(token_2)).run_id == 2
    finally:
        channel.close()


def test_clientappio_refuses_replies_and_object_requests_it_cannot_honour(tmp_path: Path) -> None:
    """A reply naming objects its ClientApp did not store, or a malformed object id, is refused
    before anything reaches the link; with the objects in place it goes on to the link (here
    unreachable, so UNAVAILABLE): the control."""
    channel = grpc.insecure_channel("127.0.0.1:1")
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    store = ObjectStore(tmp_path / "objects")
    apps = ClientApps(client, store, node_config={})
    apps.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    run = apps.adopt(NodeRun(1, "0" * 64, {}))
    token = apps.tokens.issue(1, "clientapp")
    try:
        with (
            serving_clientapps(apps) as node,
            grpc.insecure_channel(apps.clientappio_address) as io,
        ):
            stub = appio_pb2_grpc.ClientAppIoStub(io)
            node.call(apps.enqueue, run, common_pb2.Message(message_id="m1", run_id=1))
            stored = store.put(b"reply weights")
            absent = hashlib.sha256(b"never written").hexdigest()

            def push(*object_ids: str) -> grpc.StatusCode:
                reply = common_pb2.Message(
                    message_id="r1", reply_to_message_id="m1", object_ids=object_ids
                )
                request = appio_pb2.PushReplyRequest(reply=reply)
                return code_of(lambda: stub.PushReply(request, metadata=md(token)))

            assert push(stored, absent) is grpc.StatusCode.PERMISSION_DENIED
            assert push("../../etc/passwd") is grpc.StatusCode.INVALID_ARGUMENT
            assert push(stored) is grpc.StatusCode.UNAVAILABLE  # control: on to the link

            def prepare(*object_ids: str) -> None:
                stub.PrepareObjects(
                    appio_pb2.PrepareObjectsRequest(object_ids=object_ids), metadata=md(token)
                )

            prepare(stored)  # control: already in the node's store, nothing to fetch
            assert code_of(lambda: prepare("not-an-id")) is grpc.StatusCode.NOT_FOUND
            assert code_of(lambda: prepare(absent)) is grpc.StatusCode.NOT_FOUND  # link down
    finally:
        channel.close()
