"""A node whose connection closes is offline within a second, and the replies it owes are
answered: through a real link (mTLS on loopback) with real node certificates and channels.

The link's heartbeat interval here is ten minutes, so no heartbeat lapse can explain what the
tests see: only the closed connection can. Each attack sits beside its control (a node that
keeps a long poll open on another connection, or that has a newer session, stays online and
owes its reply), and nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki

from ..fleet.test_rejections import ServerApp, start_run

INTERVAL = 600.0
NODE_UNAVAILABLE = common_pb2.Error.NODE_UNAVAILABLE


@pytest.fixture
def link(pki: TestPki, tmp_path: Path) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key,
        client_ca=pki.trust_bundle_path, heartbeat_interval=INTERVAL,
    )  # fmt: skip
    with running_link(config) as running:
        yield running


@pytest.fixture
def serverappio(link: Link) -> Iterator[appio_pb2_grpc.ServerAppIoStub]:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        yield appio_pb2_grpc.ServerAppIoStub(channel)


class Connection:
    """One TCP + TLS connection of a node (its own channel), as the node process holds it."""

    def __init__(self, link: Link, pki: TestPki, name: str) -> None:
        chain, key = pki.paths(name)
        self.client: FleetClient
        self.client, self.channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        self._polls: list[threading.Thread] = []

    def long_poll(self, session: Session) -> None:
        """A pull that waits (20 s, as a node's) in the background, as the node's work loop
        keeps one open."""

        def pull() -> None:
            with contextlib.suppress(FlwrmtlsError):  # its connection closed under it
                self.client.pull(session, wait=20, active_run_ids=[])

        thread = threading.Thread(target=pull, daemon=True)
        thread.start()
        self._polls.append(thread)

    def close(self) -> None:
        """What the kernel does for a process that dies: the connection is gone."""
        self.channel.close()
        for thread in self._polls:
            thread.join(timeout=30)


def wait_long_polls(link: Link, count: int) -> None:
    """Until ``count`` long polls are open on the link (the registry of open calls)."""
    deadline = threading.Event()
    for _ in range(600):
        if len(link.live_calls) >= count:
            return
        deadline.wait(0.05)
    raise AssertionError(f"{len(link.live_calls)} calls open, expected {count}")


def online(link: Link) -> set[str]:
    now = link.clock.now().timestamp()
    return {identity for _, identity in link.state.online_nodes(now=now)}


class Replies:
    """The ServerApp's side: each call returns the replies after those it returned before."""

    def __init__(self, app: ServerApp) -> None:
        self._app = app
        self._cursor = 0

    def __call__(self, wait: float = 30.0) -> list[common_pb2.Message]:
        request = appio_pb2.PullRepliesRequest(wait_seconds=wait, after=self._cursor)
        response = self._app.stub.PullReplies(
            request, metadata=self._app.metadata, timeout=wait + 30
        )
        self._cursor = response.cursor
        return list(response.replies)


def take(connection: Connection, session: Session) -> list[str]:
    pulled = connection.client.pull(session, wait=0, active_run_ids=[])
    assert pulled is not None
    return [message.message_id for message in pulled.messages]


def test_a_node_whose_connection_closes_is_offline_and_its_awaited_reply_answered(
    link: Link, pki: TestPki, serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    dead = Connection(link, pki, "node-1")
    alive = Connection(link, pki, "node-2")
    spare = Connection(link, pki, "node-2")  # node 2's second connection
    dead_session, alive_session = dead.client.activate(), alive.client.activate()
    app = start_run(link, serverappio)
    replies = Replies(app)
    app.push(
        common_pb2.Message(message_id="m1", dst_node_id=dead_session.node_id),
        common_pb2.Message(message_id="m2", dst_node_id=alive_session.node_id),
    )
    assert take(dead, dead_session) == ["m1"]
    assert take(alive, alive_session) == ["m2"]
    # Both nodes wait for work with a long poll; node 2 keeps a second one open elsewhere.
    dead.long_poll(dead_session)
    alive.long_poll(alive_session)
    spare.long_poll(alive_session)
    wait_long_polls(link, 3)
    # Control first (its drop is judged first): node 2's connection closes, but the node
    # still has a long poll open on its other connection: it is alive.
    alive.close()
    # Attack: node 1 dies mid-round, its ClientApp never answers; the kernel closes its
    # connection.
    dead.close()
    [error] = replies()  # the link answers for node 1 at once, not after 25 minutes
    assert error.reply_to_message_id == "m1"
    assert error.error.code == NODE_UNAVAILABLE
    assert error.src_identity == "CN=node-1,O=Hospital A"
    assert "went offline (its connection closed at " in error.error.reason
    assert online(link) == {"CN=node-2,O=Hospital B"}  # node 2 is still online
    # Control: node 2's own reply is the one the ServerApp gets for m2.
    spare.client.push(
        alive_session,
        [common_pb2.Message(message_id="r2", reply_to_message_id="m2",
                            src_node_id=alive_session.node_id)],
    )  # fmt: skip
    [answer] = replies()
    assert (answer.message_id, answer.HasField("error")) == ("r2", False)
    spare.close()


def test_a_node_with_a_newer_session_is_not_taken_offline_by_its_old_connection(
    link: Link, pki: TestPki, serverappio: appio_pb2_grpc.ServerAppIoStub
) -> None:
    """A node that rotated its certificate activates again on a new connection and closes
    the old one: the old connection's drop concerns a session that is no longer the node's."""
    old, new, other = (Connection(link, pki, name) for name in ("node-1", "node-1", "node-2"))
    old_session = old.client.activate()
    app = start_run(link, serverappio)
    replies = Replies(app)
    app.push(common_pb2.Message(message_id="m1", dst_node_id=old_session.node_id))
    assert take(old, old_session) == ["m1"]
    old.long_poll(old_session)
    wait_long_polls(link, 1)
    new_session = new.client.activate()
    old.close()  # the rotated node's old connection
    # Attack beside it, to know when the drops have been judged: node 2 dies.
    other_session = other.client.activate()
    app.push(common_pb2.Message(message_id="m2", dst_node_id=other_session.node_id))
    assert take(other, other_session) == ["m2"]
    other.long_poll(other_session)
    wait_long_polls(link, 1)
    other.close()
    [error] = replies()
    assert (error.reply_to_message_id, error.error.code) == ("m2", NODE_UNAVAILABLE)
    assert online(link) == {"CN=node-1,O=Hospital A"}
    new.client.push(
        new_session,
        [common_pb2.Message(message_id="r1", reply_to_message_id="m1",
                            src_node_id=new_session.node_id)],
    )  # fmt: skip
    [answer] = replies()
    assert (answer.message_id, answer.HasField("error")) == ("r1", False)
    new.close()


def test_a_node_marked_offline_by_a_closed_connection_is_online_again_when_it_calls(
    link: Link, pki: TestPki
) -> None:
    """A node that was only cut off (its network failed and came back) resumes its session:
    its next call makes it online again, without waiting for a heartbeat."""
    first = Connection(link, pki, "node-1")
    session = first.client.activate()
    first.long_poll(session)
    wait_long_polls(link, 1)
    first.close()
    for _ in range(600):
        if not online(link):
            break
        threading.Event().wait(0.05)
    assert online(link) == set()
    again = Connection(link, pki, "node-1")
    assert take(again, session) == []  # a pull on the same session: no activation
    assert online(link) == {"CN=node-1,O=Hospital A"}
    again.close()
