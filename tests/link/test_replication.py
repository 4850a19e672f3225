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
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.callsigning import CallSigner
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.auth.ratelimit import FailureBudget
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import FleetClient, SessionEnded
from flwrmtls.link.server import Link
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
)
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.state.replicas import LOST_REASON, RENEW_EVERY, REPLICA_TTL
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.state.runtable import RunRecord
from flwrmtls.testing.link import key_node_client, mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.metadata import REFUSAL_KEY
from tests.state.engines import raw_execute

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
            listed = on_loop(b, lambda: b.state.list_nodes(now=time.time()))
            assert [n.status for n in listed] == ["online"]
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


ROUNDS = 3
NODES_PER_ROUND = 24


def test_many_nodes_activating_heartbeating_and_replying_through_both_replicas_at_once(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """Anonymous nodes get a fresh random id each: no two may get the same. Each node
    activates through one replica, heartbeats alternating between both, long-polls the other
    for its message (stored through A while the polls wait) and pushes its reply through the
    first: every call is answered (none lost, none waits forever: no deadlock between the
    replicas' locks; no poll sleeps through the wake-up A announced), every node is online
    on both, and the run's ServerApp, pulling through A, receives every reply exactly once.
    Several rounds, all at once in each."""
    with replicas(pki, tmp_path, postgres_url, client_auth=False) as links:
        a = links[0]
        run_id, token = _run_with_token(a)
        ids: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        polling = threading.Barrier(NODES_PER_ROUND + 1, timeout=120)

        def node(index: int) -> None:
            try:
                channels = [
                    grpc.secure_channel(
                        f"127.0.0.1:{links[(index + k) % 2].fleet_port}",
                        grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes()),
                        options=[("grpc.ssl_target_name_override", "localhost")],
                    )
                    for k in (0, 1)
                ]
                with channels[0], channels[1]:
                    stubs = [fleet_pb2_grpc.FleetStub(channel) for channel in channels]
                    active = stubs[0].ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=30)
                    for beat in range(6):
                        stubs[beat % 2].Heartbeat(
                            fleet_pb2.HeartbeatRequest(session_id=active.session_id), timeout=30
                        )
                    with lock:
                        ids.append(active.node_id)
                    poll = stubs[1].PullMessages.future(
                        fleet_pb2.PullMessagesRequest(
                            session_id=active.session_id, wait_seconds=30,
                            active_run_ids=[run_id],
                        ),
                        timeout=60,
                    )  # fmt: skip
                    polling.wait()
                    messages = list(poll.result().messages)  # woken, not timed out
                    [message] = messages
                    reply = common_pb2.Message(
                        message_id=f"reply-{message.message_id}", run_id=run_id,
                        src_node_id=active.node_id, reply_to_message_id=message.message_id,
                        message_type="train",
                    )  # fmt: skip
                    stubs[0].PushMessages(
                        fleet_pb2.PushMessagesRequest(
                            session_id=active.session_id, messages=[reply]
                        ),
                        timeout=30,
                    )
            except BaseException as error:
                with lock:
                    errors.append(error)

        for _ in range(ROUNDS):
            before = len(ids)
            threads = [threading.Thread(target=node, args=(i,)) for i in range(NODES_PER_ROUND)]
            for thread in threads:
                thread.start()
            polling.wait()  # every node activated, heartbeated and is polling
            round_ids = ids[before:]
            now = time.time()

            def push(round_ids: list[int] = round_ids, now: float = now) -> None:
                rows = []
                for node_id in round_ids:
                    message = common_pb2.Message(
                        message_id=f"m-{node_id}", run_id=run_id, dst_node_id=node_id,
                        message_type="train",
                    )  # fmt: skip
                    rows.append(MessageRow(
                        message.message_id, run_id, 0, node_id, "", now, now + 600,
                        message.SerializeToString(),
                    ))  # fmt: skip
                a.state.messages.store(rows)
                for node_id in round_ids:
                    a.notifier.notify(("node", node_id))

            on_loop(a, push)
            for thread in threads:
                thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        total = ROUNDS * NODES_PER_ROUND
        assert len(ids) == total
        assert len(set(ids)) == total
        for link in links:
            listed = on_loop(link, partial(link.state.list_nodes, now=time.time()))
            online = {n.node_id for n in listed if n.status == "online"}
            assert online == set(ids)
        replies: list[common_pb2.Message] = []
        with grpc.insecure_channel(f"127.0.0.1:{a.serverappio_port}") as channel:
            stub = appio_pb2_grpc.ServerAppIoStub(channel)
            cursor = 0
            while len(replies) < total:
                pulled = stub.PullReplies(
                    appio_pb2.PullRepliesRequest(wait_seconds=5, after=cursor),
                    metadata=((TOKEN_METADATA_KEY, token),), timeout=30,
                )  # fmt: skip
                assert pulled.replies, f"{len(replies)} of {total} replies"
                replies += pulled.replies
                cursor = pulled.cursor
        assert sorted(r.reply_to_message_id for r in replies) == sorted(f"m-{i}" for i in ids)
        assert {r.src_node_id for r in replies} == set(ids)


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


class _Capture(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Inside a node's signing interceptor: records what a call sends (as someone on the
    path between the node and the balancer would), and lets it go on."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        self.metadata = tuple(client_call_details.metadata or ())
        return continuation(client_call_details, request)


def test_a_signed_call_replayed_to_the_other_replica_is_refused_as_replayed(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """Both replicas present one server certificate, so a node's signature names the same
    audience on either: before the nonces were claimed in the database, a heartbeat captured
    on its way to A passed again on B (each replica's replay memory its own)."""
    with replicas(pki, tmp_path, postgres_url, client_auth=False, node_auth=NodeAuth.KEY) as (
        a,
        b,
    ):
        key = ec.generate_private_key(ec.SECP384R1())
        roots = pki.trust_bundle_path
        fleet_a, signed_a = key_node_client(a, root_certificates=roots, key=key)
        fleet_b, signed_b = key_node_client(b, root_certificates=roots, key=key)
        _, plain_a = node_client(a, root_certificates=roots)
        _, plain_b = node_client(b, root_certificates=roots)
        with signed_a, signed_b, plain_a, plain_b:
            session = fleet_a.activate()
            capture = _Capture()
            audience = LinkAudience(
                f"127.0.0.1:{a.fleet_port}", roots.read_bytes(), server_name="localhost"
            )
            capturing = grpc.intercept_channel(
                grpc.intercept_channel(plain_a, capture),
                SigningInterceptor(CallSigner(key), audience.current),
            )
            request = fleet_pb2.HeartbeatRequest(session_id=session.session_id)
            fleet_pb2_grpc.FleetStub(capturing).Heartbeat(request, timeout=30)  # A: the original
            assert capture.metadata
            with pytest.raises(grpc.RpcError) as replayed:
                fleet_pb2_grpc.FleetStub(plain_b).Heartbeat(
                    request, metadata=capture.metadata, timeout=30
                )
            assert replayed.value.code() is grpc.StatusCode.UNAUTHENTICATED
            trailers = {m.key: str(m.value) for m in replayed.value.trailing_metadata() or ()}
            assert trailers.get(REFUSAL_KEY) == "replayed"
            fleet_b.heartbeat(session)  # control: the node's own fresh call passes on B


def _run_with_token(link: Link) -> tuple[int, str]:
    """A running run whose ServerApp is beside ``link`` (its token in ``link``'s mirror)."""

    def create() -> tuple[int, str]:
        runs = link.state.runs
        run_id = runs.create(
            app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
            owner="role=operator,CN=cli-operator", now=time.time(),
        )  # fmt: skip
        runs.transition(run_id, RunStatus.RUNNING, "", time.time())
        token = new_token()
        runs.add_token(token_hash(token), run_id, "serverapp")
        return run_id, token

    return on_loop(link, create)


def _serverapp_may_call(link: Link, token: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        stub = appio_pb2_grpc.ServerAppIoStub(channel)
        try:
            stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=((TOKEN_METADATA_KEY, token),))
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAUTHENTICATED:
                raise
            return False
        return True


def test_a_run_stopped_through_one_replica_loses_its_token_on_the_replica_running_it(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """``flwrmtls stop`` reaching B for a run whose ServerApp is beside A: A's mirror of run
    tokens must drop it (the run's end is announced), or the stopped run's ServerApp would go
    on pushing messages through A."""
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        stopped, stopped_token = _run_with_token(a)
        running, running_token = _run_with_token(a)
        assert _serverapp_may_call(a, stopped_token)
        identity = load_tls_identity(*pki.paths("cli-operator"), cert_flag="c", key_flag="k")
        with grpc.secure_channel(
            f"127.0.0.1:{b.control_port}",
            channel_credentials(pki.trust_bundle_path.read_bytes(), identity),
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            control_pb2_grpc.ControlStub(channel).StopRun(
                control_pb2.StopRunRequest(run_id=stopped), timeout=30
            )
        wait_until(lambda: not _serverapp_may_call(a, stopped_token))
        assert _serverapp_may_call(a, running_token)  # control: the other run's token works
        other = on_loop(b, lambda: b.state.runs.get(running))
        assert other is not None
        assert other.status is RunStatus.RUNNING


def test_a_replica_whose_lease_passes_has_its_runs_failed_and_serves_on(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """A replica cut from the database for longer than its lease (here: its renewals stopped
    and its row made stale, as a cut would) is declared lost by the other: its runs end
    failed, "link replica lost", and their tokens stop working on it; when its renewals come
    back it finds itself declared lost, joins again and serves on. The other replica's run
    (the control) runs on."""
    with replicas(pki, tmp_path, postgres_url) as (a, b):
        lost, lost_token = _run_with_token(a)
        kept, kept_token = _run_with_token(b)
        renewing = a.replication._tasks[1]
        on_loop(a, renewing.cancel)
        wait_until(renewing.done)
        raw_execute(
            postgres_url, "UPDATE link_replicas SET alive_until = 0 WHERE replica_id = ?",
            a.state.replica_id,
        )  # fmt: skip
        bound = REPLICA_TTL + 2 * RENEW_EVERY + 10

        def run_of(link: Link, run_id: int) -> RunRecord:
            run = on_loop(link, lambda: link.state.runs.get(run_id))
            assert run is not None
            return run

        wait_until(lambda: run_of(b, lost).ended, bound)
        assert (run_of(b, lost).status, run_of(b, lost).reason) == (RunStatus.FAILED, LOST_REASON)
        wait_until(lambda: not _serverapp_may_call(a, lost_token))
        assert run_of(b, kept).status is RunStatus.RUNNING  # the control
        assert _serverapp_may_call(b, kept_token)

        def alive() -> list[str]:
            return [r[0] for r in on_loop(b, lambda: b.state.replicas.alive(now=time.time()))]

        assert a.state.replica_id not in alive()
        on_loop(a, lambda: a.replication._tasks.append(
            asyncio.get_running_loop().create_task(a.replication._renew())
        ))  # fmt: skip
        wait_until(lambda: a.state.replica_id in alive(), bound)  # A joined again
        fleet_a, channel_a = client(a, pki)
        with channel_a:
            fleet_a.heartbeat(fleet_a.activate())
