"""As anyone on the network, or a node: the limits the link's listeners enforce, each exceeded by
a real client beside one that stays within it. Real link, real gRPC clients; the limits are set
small here (LinkConfig.server_limits, calls_per_address) so a test can reach them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import Session
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.server import Link
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.listen import ServerLimits


def config(pki: TestPki, tmp_path: Path, **changes: Any) -> LinkConfig:
    chain, key = pki.paths("server")
    base = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    return replace(base, **changes)


@pytest.fixture
def limited(pki: TestPki, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    with running_link(config(pki, tmp_path, **request.param)) as link:
        yield link


def serverapp(link: Link) -> tuple[tuple[tuple[str, str]], int]:
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    runs.add_token(token_hash(token), run_id, "serverapp")
    return ((TOKEN_METADATA_KEY, token),), run_id


def node(link: Link, pki: TestPki, name: str = "node-1") -> tuple[Any, grpc.Channel, Session]:
    chain, key = pki.paths(name)
    client, channel = node_client(link, root_certificates=pki.trust_bundle_path, chain=chain,
                                  key=key)  # fmt: skip
    return fleet_pb2_grpc.FleetStub(channel), channel, client.activate()


def own_connection(port: int) -> grpc.Channel:
    """A channel with a connection of its own (grpc shares them between channels otherwise)."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), str(caught.value.details())


def test_a_request_over_the_size_limit_is_refused_before_it_is_parsed(link: Link) -> None:
    """No token, so a request that reached the interceptor would be UNAUTHENTICATED: a large
    one is refused by grpc first, unparsed, whoever sends it."""
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        stub = appio_pb2_grpc.ServerAppIoStub(channel)
        large = common_pb2.Message(content=b"\0" * (5 << 20))
        code, details = code_of(
            lambda: stub.PushMessages(appio_pb2.PushAppMessagesRequest(messages=[large]))
        )
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
        small = common_pb2.Message(content=b"\0" * 1000)
        code, _ = code_of(
            lambda: stub.PushMessages(appio_pb2.PushAppMessagesRequest(messages=[small]))
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED  # control: parsed, then refused


def test_metadata_over_the_limit_is_refused(link: Link) -> None:
    metadata, _ = serverapp(link)
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        stub = appio_pb2_grpc.ServerAppIoStub(channel)
        padded = (*metadata, ("x-padding", "p" * (32 << 10)))
        code, details = code_of(lambda: stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=padded))
        assert code is not grpc.StatusCode.OK, details
        assert stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata).run_id  # control


@pytest.mark.parametrize("limited", [{"server_limits": ServerLimits(max_connections=2)}],
                         indirect=True)  # fmt: skip
def test_connections_over_the_listeners_limit_are_closed(limited: Link) -> None:
    metadata, run_id = serverapp(limited)
    channels = [own_connection(limited.serverappio_port) for _ in range(3)]
    try:
        stubs = [appio_pb2_grpc.ServerAppIoStub(channel) for channel in channels]
        for stub in stubs[:2]:
            assert stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata).run_id == run_id
        code, _ = code_of(
            lambda: stubs[2].GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata, timeout=5)
        )
        assert code is grpc.StatusCode.UNAVAILABLE
        channels[0].close()  # control: once one connection is gone, a new one is accepted
        deadline = time.monotonic() + 30
        while True:
            try:
                stubs[2].GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata, timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the freed connection was never reused"
    finally:
        for channel in channels:
            channel.close()


@pytest.mark.parametrize("limited", [{"calls_per_address": 2}], indirect=True)
def test_calls_in_progress_per_address_are_bounded(limited: Link, pki: TestPki) -> None:
    fleet, channel, session = node(limited, pki)
    pull = fleet_pb2.PullMessagesRequest(session_id=session.session_id, wait_seconds=30)
    polls = [fleet.PullMessages.future(pull, timeout=60) for _ in range(2)]
    heartbeat = fleet_pb2.HeartbeatRequest(session_id=session.session_id)
    deadline = time.monotonic() + 30
    refusal: grpc.RpcError | None = None
    while refusal is None:  # until both long polls are in progress on the link
        try:
            fleet.Heartbeat(heartbeat, timeout=5)
        except grpc.RpcError as error:
            refusal = error
        assert time.monotonic() < deadline, "a third call was never refused"
    assert refusal.code() is grpc.StatusCode.UNAVAILABLE
    assert "too many calls in progress from ipv4:127.0.0.1 (2; the link allows 2" in (
        str(refusal.details())
    )
    for poll in polls:
        poll.cancel()
    deadline = time.monotonic() + 30
    while True:  # control: once they have ended, the address's calls are served again
        try:
            fleet.Heartbeat(heartbeat, timeout=5)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the address stayed blocked"
    channel.close()


@pytest.mark.parametrize(
    "limited",
    [{"server_limits": ServerLimits(max_connection_age=1.0, max_connection_age_grace=1.0)}],
    indirect=True,
)
def test_connections_are_closed_at_their_age_and_clients_carry_on(
    limited: Link, pki: TestPki
) -> None:
    fleet, channel, session = node(limited, pki)
    heartbeat = fleet_pb2.HeartbeatRequest(session_id=session.session_id)

    def peer() -> str:
        fleet.Heartbeat(heartbeat, timeout=10)  # records the peer address it came from
        [record] = limited.state.list_nodes(now=time.time(), verbose=True)
        return record.peer_address

    first = peer()
    deadline = time.monotonic() + 30
    while peer() == first:  # each heartbeat succeeds, over whichever connection is open
        assert time.monotonic() < deadline, "the connection outlived its age"
        time.sleep(0.2)
    channel.close()


@pytest.mark.parametrize("limited", [{"server_limits": ServerLimits(max_concurrent_streams=1)}],
                         indirect=True)  # fmt: skip
def test_calls_beyond_the_streams_of_one_connection_wait_and_others_do_not(
    limited: Link, pki: TestPki
) -> None:
    metadata, _ = serverapp(limited)
    with (
        own_connection(limited.serverappio_port) as crowded,
        own_connection(limited.serverappio_port) as other,
    ):
        stub = appio_pb2_grpc.ServerAppIoStub(crowded)
        stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata)  # connected
        waiting = stub.GetNodes.future(
            appio_pb2.GetNodesRequest(minimum=1, wait_seconds=30), metadata=metadata, timeout=60
        )
        deadline = time.monotonic() + 30
        while ("nodes",) not in limited.notifier._events:  # the long poll waits on the link
            assert time.monotonic() < deadline, "the long poll never started"
            time.sleep(0.05)
        queued = stub.GetRun.future(appio_pb2.GetAppRunRequest(), metadata=metadata, timeout=60)
        # Another connection is served while the crowded one's second call waits for a stream.
        appio_pb2_grpc.ServerAppIoStub(other).GetRun(appio_pb2.GetAppRunRequest(),
                                                     metadata=metadata)  # fmt: skip
        assert not queued.done()
        _, node_channel, _ = node(limited, pki)  # a node comes online: the long poll ends
        assert len(waiting.result().nodes) == 1
        assert queued.result().run_id
        node_channel.close()
