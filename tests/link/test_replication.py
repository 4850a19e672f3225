"""Two link processes' worth of state on one PostgreSQL database act as one link.

Each test runs two real links (two event loops, two database connections, two sets of
mirrors) on one PostgreSQL database and one object directory, and calls them as nodes do,
alternating; what one replica changes must hold on the other. The controls are the same calls
on one replica.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from flwrmtls.auth.ratelimit import FailureBudget
from flwrmtls.fleet.client import FleetClient, SessionEnded
from flwrmtls.link.server import Link
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki

_T = TypeVar("_T")


def on_loop(link: Link, call: Callable[[], _T]) -> _T:
    """Run ``call`` in the link's event loop (its state is the loop's alone) and return."""

    async def run() -> _T:
        return call()

    return asyncio.run_coroutine_threadsafe(run(), link.loop).result(timeout=30)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@contextmanager
def replicas(
    pki: TestPki, tmp_path: Path, url: str, *, client_auth: bool = True, **changes: object
) -> Iterator[list[Link]]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "unused.db", server_chain=chain, server_key=key,
        client_ca=pki.trust_bundle_path, heartbeat_interval=5, require_client_auth=client_auth,
    )  # fmt: skip
    config = replace(config, database=url, objects_dir=tmp_path / "objects", **changes)  # type: ignore[arg-type]
    with ExitStack() as stack:
        links = [stack.enter_context(running_link(config)) for _ in range(2)]
        for link in links:  # announcements flow once each listens
            wait_until(link.replication.listening.is_set)
        yield links


def client(link: Link, pki: TestPki, name: str = "node-1") -> tuple[FleetClient, grpc.Channel]:
    chain, key = pki.paths(name)
    return node_client(link, root_certificates=pki.trust_bundle_path, chain=chain, key=key)


def test_a_session_started_on_one_replica_is_served_by_the_other(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        fleet_a, channel_a = client(a, pki)
        fleet_b, channel_b = client(b, pki)
        with channel_a, channel_b:
            session = fleet_a.activate()
            fleet_b.heartbeat(session)  # B had never heard of this session
            assert fleet_b.pull(session, wait=0, active_run_ids=[]) is not None
            assert [n.status for n in b.state.list_nodes(now=time.time())] == ["online"]
            # The node activates again through B: A refuses the old session as superseded
            # and serves the new one.
            newer = fleet_b.activate()
            wait_until(
                lambda: a.state._sessions.get(session.node_id, ("",))[0] != session.session_id
            )
            with pytest.raises(SessionEnded, match="superseded"):
                fleet_a.heartbeat(session)
            fleet_a.heartbeat(newer)


def test_a_message_stored_through_one_replica_wakes_a_long_poll_on_the_other(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """Before LISTEN/NOTIFY, B's long poll slept its whole wait: the call's deadline, shorter
    than the wait, passed first."""
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        fleet_b, channel_b = client(b, pki)
        with channel_b:
            session = fleet_b.activate()
            run_id = on_loop(a, lambda: a.state.runs.create(
                app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
                owner="o", now=time.time(),
            ))  # fmt: skip
            stub = fleet_pb2_grpc.FleetStub(channel_b)
            answer = stub.PullMessages.future(
                fleet_pb2.PullMessagesRequest(session_id=session.session_id, wait_seconds=30),
                timeout=15,  # a poll not woken ends in DEADLINE_EXCEEDED
            )
            time.sleep(0.5)  # the poll is waiting on B
            message = common_pb2.Message(message_id="m1", run_id=run_id,
                                         dst_node_id=session.node_id)  # fmt: skip
            now = time.time()

            def push() -> None:
                a.state.messages.store([MessageRow(
                    "m1", run_id, 0, session.node_id, "", now, now + 600,
                    message.SerializeToString(),
                )])  # fmt: skip
                a.notifier.notify(("node", session.node_id))

            on_loop(a, push)
            pulled = answer.result()
            assert [m.message_id for m in pulled.messages] == ["m1"]


def test_unregistering_through_one_replica_ends_the_nodes_calls_on_the_other(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        fleet_b, channel_b = client(b, pki)
        fleet_b2, channel_b2 = client(b, pki, "node-2")
        with channel_b, channel_b2:
            session = fleet_b.activate()
            other = fleet_b2.activate()
            stub = fleet_pb2_grpc.FleetStub(channel_b)
            poll = stub.PullMessages.future(
                fleet_pb2.PullMessagesRequest(session_id=session.session_id, wait_seconds=30),
                timeout=30,
            )
            time.sleep(0.5)
            on_loop(a, lambda: a.state.unregister_node(
                session.node_id, by="CN=operator", now=time.time()
            ))  # fmt: skip
            with pytest.raises(grpc.RpcError) as ended:
                poll.result()
            assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "node unregistered" in (ended.value.details() or "")
            with pytest.raises(Exception, match="unregistered"):
                fleet_b.heartbeat(session)
            fleet_b2.heartbeat(other)  # control: another node is served on


def test_failed_authentications_count_against_one_budget_across_replicas(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    budget = FailureBudget(burst=3, per_second=0.001)
    with replicas(pki, tmp_path, postgres_url, auth_failures=budget) as (a, b):
        for _ in range(3):
            on_loop(a, lambda: a._limiters["fleet"].failed("ipv4:198.51.100.7", b""))
        wait_until(lambda: b._limiters["fleet"].wait("ipv4:198.51.100.7", b"") is not None)
        assert b._limiters["fleet"].wait("ipv4:198.51.100.8", b"") is None  # another address
        assert b._limiters["control"].wait("ipv4:198.51.100.7", b"") is None  # its own budget


def test_many_nodes_activating_and_heartbeating_through_both_replicas_at_once(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """Anonymous nodes get a fresh random id each: no two may get the same, no call may be
    lost or wait forever (run several rounds)."""
    with replicas(pki, tmp_path, postgres_url, client_auth=False) as links:
        ids: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def node(index: int) -> None:
            try:
                first = links[index % 2]
                channel = grpc.secure_channel(
                    f"127.0.0.1:{first.fleet_port}",
                    grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes()),
                    options=[("grpc.ssl_target_name_override", "localhost")],
                )
                other = grpc.secure_channel(
                    f"127.0.0.1:{links[(index + 1) % 2].fleet_port}",
                    grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes()),
                    options=[("grpc.ssl_target_name_override", "localhost")],
                )
                with channel, other:
                    stubs = [fleet_pb2_grpc.FleetStub(channel), fleet_pb2_grpc.FleetStub(other)]
                    active = stubs[0].ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=30)
                    for beat in range(6):
                        stubs[beat % 2].Heartbeat(
                            fleet_pb2.HeartbeatRequest(session_id=active.session_id), timeout=30
                        )
                    with lock:
                        ids.append(active.node_id)
            except BaseException as error:
                with lock:
                    errors.append(error)

        for _ in range(3):
            threads = [threading.Thread(target=node, args=(i,)) for i in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert len(ids) == 72
        assert len(set(ids)) == 72
        online = {n.node_id for n in links[1].state.list_nodes(now=time.time())
                  if n.status == "online"}  # fmt: skip
        assert online == set(ids)


def test_a_replica_that_has_not_heard_of_a_session_yet_reads_it_before_refusing(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """B's announcements are cut (as if late): a session A started minutes ago is still
    served by B, which reads the database on a miss; an unknown session is still refused."""
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        listener = b.replication._tasks[0]
        on_loop(b, listener.cancel)
        wait_until(listener.done)
        fleet_a, channel_a = client(a, pki)
        fleet_b, channel_b = client(b, pki)
        with channel_a, channel_b:
            session = fleet_a.activate()
            assert fleet_b.pull(session, wait=0, active_run_ids=[]) is not None
            fleet_b.heartbeat(session)
            stale = replace(session, session_id="0" * 32)
            with pytest.raises(SessionEnded):
                fleet_b.pull(stale, wait=0, active_run_ids=[])
