"""As a node, a ServerApp or a ClientApp: a long poll with a wait that is not a number of
seconds from 0 to 30 is refused at once, and the link (or node) keeps serving everyone else.

Regression: a NaN ``wait_seconds`` made Fleet PullMessages spin until the caller's deadline
and ServerAppIo PullReplies loop without yielding, freezing the link's one event loop (Fleet,
Control and ServerAppIo all stopped); ``inf`` and ``1e300`` held the call for 30 s. Each bad
wait is sent while another client calls another API, which must be answered meanwhile; the
same long poll with a good wait is the control. Real link, real TLS, real gRPC clients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
)
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.node import serving_clientapps
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.errors import ConnectionContext

BAD_WAITS = [math.nan, math.inf, -math.inf, -1.0, 30.001, 1e300]
ANSWER_WITHIN = 10.0
"""Seconds the refusal may take at most (a generous bound on a loaded machine; the bug held
calls for 30 s or forever)."""


@dataclass
class Federation:
    link: Link
    fleet: Any  # FleetStub
    session: Session
    serverappio: Any  # ServerAppIoStub
    token: str
    control: Any  # ControlStub


@pytest.fixture(scope="module")
def federation(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path_factory.mktemp("link") / "link.db",
        server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path,
    )  # fmt: skip
    with running_link(config) as link:
        client, node_channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=pki.paths("node-1")[0],
            key=pki.paths("node-1")[1],
        )  # fmt: skip
        session = client.activate()
        runs = link.state.runs
        run_id = runs.create(
            app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
            owner="t", now=1.0,
        )  # fmt: skip
        runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
        token = new_token()
        runs.add_token(token_hash(token), run_id, "serverapp")
        operator = load_tls_identity(*pki.paths("cli-operator"), cert_flag="c", key_flag="k")
        control_channel = grpc.secure_channel(
            f"127.0.0.1:{link.control_port}",
            channel_credentials(pki.trust_bundle_path.read_bytes(), operator),
        )
        app_channel = grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}")
        try:
            yield Federation(
                link=link,
                fleet=fleet_pb2_grpc.FleetStub(node_channel),
                session=session,
                serverappio=appio_pb2_grpc.ServerAppIoStub(app_channel),
                token=token,
                control=control_pb2_grpc.ControlStub(control_channel),
            )
        finally:
            for channel in (node_channel, control_channel, app_channel):
                channel.close()


def refused_while_others_are_served(
    start: Callable[[float], Any], others: Callable[[], object], wait: float
) -> str:
    """Start the long poll with ``wait``; while it is pending, ``others()`` must be answered;
    the long poll must end with INVALID_ARGUMENT within ANSWER_WITHIN. Returns its details."""
    pending = start(wait)
    others()
    with pytest.raises(grpc.RpcError) as caught:
        pending.result()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return str(caught.value.details())


def list_runs(federation: Federation) -> Callable[[], object]:
    def call() -> object:
        return federation.control.ListRuns(control_pb2.ListRunsRequest(), timeout=5)

    return call


@pytest.mark.parametrize("wait", BAD_WAITS, ids=repr)
def test_fleet_pull_messages(federation: Federation, wait: float) -> None:
    def pull(seconds: float) -> Any:
        request = fleet_pb2.PullMessagesRequest(
            session_id=federation.session.session_id, wait_seconds=seconds
        )
        return federation.fleet.PullMessages.future(request, timeout=ANSWER_WITHIN)

    details = refused_while_others_are_served(pull, list_runs(federation), wait)
    assert details == (
        f"PullMessagesRequest.wait_seconds must be a number of seconds from 0 to 30; got {wait!r}"
    )
    pull(0.2).result()  # control: a good wait is served


@pytest.mark.parametrize("wait", BAD_WAITS, ids=repr)
def test_serverappio_pull_replies(federation: Federation, wait: float) -> None:
    metadata = ((TOKEN_METADATA_KEY, federation.token),)

    def pull(seconds: float) -> Any:
        request = appio_pb2.PullRepliesRequest(wait_seconds=seconds)
        return federation.serverappio.PullReplies.future(
            request, metadata=metadata, timeout=ANSWER_WITHIN
        )

    details = refused_while_others_are_served(pull, list_runs(federation), wait)
    assert "PullRepliesRequest.wait_seconds must be a number of seconds from 0 to 30" in details
    pull(0.2).result()  # control


@pytest.mark.parametrize("wait", BAD_WAITS, ids=repr)
def test_serverappio_get_nodes(federation: Federation, wait: float) -> None:
    metadata = ((TOKEN_METADATA_KEY, federation.token),)

    def get_nodes(seconds: float) -> Any:
        request = appio_pb2.GetNodesRequest(minimum=5, wait_seconds=seconds)
        return federation.serverappio.GetNodes.future(
            request, metadata=metadata, timeout=ANSWER_WITHIN
        )

    def heartbeat() -> object:  # another API: the Fleet
        request = fleet_pb2.HeartbeatRequest(session_id=federation.session.session_id)
        return federation.fleet.Heartbeat(request, timeout=5)

    details = refused_while_others_are_served(get_nodes, heartbeat, wait)
    assert "GetNodesRequest.wait_seconds must be a number of seconds from 0 to 30" in details
    [node] = get_nodes(0.2).result().nodes  # control: the one node online, after the wait
    assert node.node_id == federation.session.node_id


@pytest.mark.parametrize("wait", BAD_WAITS, ids=repr)
def test_clientappio_pull_message(tmp_path: Path, wait: float) -> None:
    """The node's ClientAppIo: a bad wait is refused while another run's ClientApp is served."""
    channel = grpc.insecure_channel("127.0.0.1:1")  # the link is never called here
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    apps = ClientApps(client, ObjectStore(tmp_path / "objects"), node_config={})
    apps.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    apps.adopt(NodeRun(1, "0" * 64, {}))
    apps.adopt(NodeRun(2, "1" * 64, {}))
    token_1 = apps.tokens.issue(1, "clientapp")
    token_2 = apps.tokens.issue(2, "clientapp")
    try:
        with (
            serving_clientapps(apps),
            grpc.insecure_channel(apps.clientappio_address) as io,
        ):
            stub = appio_pb2_grpc.ClientAppIoStub(io)

            def pull(seconds: float) -> Any:
                return stub.PullMessage.future(
                    appio_pb2.PullAppMessageRequest(wait_seconds=seconds),
                    metadata=((TOKEN_METADATA_KEY, token_1),), timeout=ANSWER_WITHIN,
                )  # fmt: skip

            def other_run() -> object:
                return stub.GetRun(
                    appio_pb2.GetAppRunRequest(), metadata=((TOKEN_METADATA_KEY, token_2),),
                    timeout=5,
                )  # fmt: skip

            details = refused_while_others_are_served(pull, other_run, wait)
            assert "PullAppMessageRequest.wait_seconds must be a number of seconds" in details
            assert not pull(0.2).result().HasField("message")  # control: waited, nothing came
    finally:
        channel.close()
