"""ServerAppIoServicer on its own: its handlers called in-process with a run's principal, over
real SQLite state, on the fake clock.

A ServerApp process calling it through the real link is the e2e tests' (tests/e2e/test_runs.py);
its refusals through the interceptor are tests/wire/test_refusals.py's and the routing rules
tests/runs/test_routing.py's. Here: the run is always the token's, a push is stored and wakes
its node, the long polls answer on the fake clock, a node gone offline gets its ServerApp a
NODE_UNAVAILABLE reply, and a result of the wrong shape is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flwrmtls.app.message import ErrorCode
from flwrmtls.appio.serverappio import ServerAppIoServicer
from flwrmtls.auth.authenticator import AuthMethod, Principal
from flwrmtls.auth.caller import acting_as
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import appio_pb2, common_pb2
from flwrmtls.runs.linkobjects import LinkObjects, StorageLimits
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.runlog import RunLog
from flwrmtls.runs.serverapps import ServerApps
from flwrmtls.state.linkstate import LinkState
from flwrmtls.testing.clock import FakeClock
from flwrmtls.wire.refusals import CallRefused, Refusal

_T = TypeVar("_T")
HEARTBEAT = 10.0


@dataclass
class Link:
    """The parts of a link the servicer works with, none of its network."""

    state: LinkState
    clock: FakeClock
    notifier: Notifier
    runs: ServerApps
    servicer: ServerAppIoServicer

    def run(self, owner: str = "CN=op") -> int:
        return self.state.runs.create(
            app_name="app", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
            owner=owner, now=self.clock.now().timestamp(),
        )  # fmt: skip

    def node(self, name: str) -> int:
        node_id, _ = self.state.activate_node(
            node_id=None, identity=f"CN={name}", organisation="", auth_method="certificate",
            cert_fingerprint="", cert_not_after=0.0, peer_address="ipv4:127.0.0.1:1",
            now=self.clock.now().timestamp(), heartbeat_interval=HEARTBEAT,
        )  # fmt: skip
        return node_id

    def call(self, run_id: int, handler: Awaitable[_T]) -> _T:
        """Await ``handler`` as run ``run_id``'s ServerApp (its token's principal)."""

        async def as_the_run() -> _T:
            with acting_as(app_principal(run_id)):
                return await handler

        return asyncio.run(as_the_run())


def app_principal(run_id: int) -> Principal:
    return Principal(
        kind=PrincipalKind.SERVERAPP, auth_method=AuthMethod.TOKEN, identity="serverapp",
        organisation="", node_id=None, not_after=None, fingerprint="", run_id=run_id,
    )  # fmt: skip


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    clock = FakeClock()
    state = LinkState(tmp_path / "link.db")
    notifier = Notifier()
    objects = LinkObjects(ObjectStore(tmp_path / "objects"), state, clock, StorageLimits())
    runs = ServerApps(
        state, clock, notifier=notifier, run_log=RunLog(state.runs, notifier, clock),
        objects=objects,
    )  # fmt: skip
    servicer = ServerAppIoServicer(state, clock, notifier=notifier, objects=objects, runs=runs)
    try:
        yield Link(state, clock, notifier, runs, servicer)
    finally:
        state.close()


def instruction(message_id: str, dst_node_id: int) -> common_pb2.Message:
    return common_pb2.Message(message_id=message_id, dst_node_id=dst_node_id, message_type="train")


CONTEXT: Any = None  # the handlers here never use their context


def test_a_push_is_the_tokens_runs_and_wakes_its_node(link: Link) -> None:
    mine, other = link.run(), link.run()
    node = link.node("node-1")
    woken: list[bool] = []

    async def push_and_watch() -> appio_pb2.PushAppMessagesResponse:
        waiting = asyncio.create_task(link.notifier.wait(("node", node), 5))
        await asyncio.sleep(0)
        request = appio_pb2.PushAppMessagesRequest(messages=[instruction("m1", node)])
        response = await link.servicer.PushMessages(request, CONTEXT)
        woken.append(await waiting)
        return response

    response = link.call(mine, push_and_watch())
    assert list(response.message_ids) == ["m1"]
    assert woken == [True]
    [row] = link.state.messages.get(["m1"]).values()
    assert (row.run_id, row.dst_node_id) == (mine, node)  # stamped with the token's run
    # Another run's ServerApp sees none of it, and cannot answer for this run's nodes.
    replies = appio_pb2.PullRepliesRequest(wait_seconds=0)
    assert list(link.call(other, link.servicer.PullReplies(replies, CONTEXT)).replies) == []
    # A message to a node the link does not know is refused, and nothing is stored.
    stranger = appio_pb2.PushAppMessagesRequest(messages=[instruction("m2", 999)])
    with pytest.raises(CallRefused) as refused:
        link.call(mine, link.servicer.PushMessages(stranger, CONTEXT))
    assert refused.value.refusal is Refusal.INVALID_MESSAGE
    assert "unknown node 999" in refused.value.details
    assert link.state.messages.get(["m2"]) == {}


def test_get_nodes_lists_the_nodes_online_on_the_clock(link: Link) -> None:
    run_id = link.run()
    first = link.node("node-1")
    ask = appio_pb2.GetNodesRequest(minimum=1, wait_seconds=0)
    listed = link.call(run_id, link.servicer.GetNodes(ask, CONTEXT))
    assert [(n.node_id, n.identity) for n in listed.nodes] == [(first, "CN=node-1")]
    link.clock.advance(HEARTBEAT * 3)  # no heartbeat since: offline
    second = link.node("node-2")
    listed = link.call(run_id, link.servicer.GetNodes(ask, CONTEXT))
    assert [n.node_id for n in listed.nodes] == [second]


def test_a_node_gone_offline_gets_its_serverapp_an_error_reply(link: Link) -> None:
    run_id = link.run()
    node = link.node("node-1")
    push = appio_pb2.PushAppMessagesRequest(messages=[instruction("m1", node)])
    link.call(run_id, link.servicer.PushMessages(push, CONTEXT))
    pull = appio_pb2.PullRepliesRequest(wait_seconds=0)
    waiting = link.call(run_id, link.servicer.PullReplies(pull, CONTEXT))
    assert (list(waiting.replies), waiting.cursor) == ([], 0)  # the node is online: it waits
    link.clock.advance(HEARTBEAT * 3)  # past its heartbeat grace
    answered = link.call(run_id, link.servicer.PullReplies(pull, CONTEXT))
    [reply] = answered.replies
    assert reply.reply_to_message_id == "m1"
    assert reply.error.code == ErrorCode.NODE_UNAVAILABLE
    assert "node CN=node-1 went offline" in reply.error.reason
    assert answered.cursor > 0
    # The cursor: what was seen is not answered again.
    after = appio_pb2.PullRepliesRequest(wait_seconds=0, after=answered.cursor)
    assert list(link.call(run_id, link.servicer.PullReplies(after, CONTEXT)).replies) == []


def test_a_run_result_of_another_shape_is_refused_and_nothing_is_kept(link: Link) -> None:
    run_id = link.run()
    bad = appio_pb2.SetRunResultRequest(result_json='{"loss": NaN}')
    with pytest.raises(CallRefused) as refused:
        link.call(run_id, link.servicer.SetRunResult(bad, CONTEXT))
    assert refused.value.refusal is Refusal.INVALID_REQUEST
    run = link.state.runs.get(run_id)
    assert run is not None
    assert run.result_json == ""
    good = json.dumps({"train_metrics": {"1": {"loss": 0.5}}})
    link.call(run_id, link.servicer.SetRunResult(
        appio_pb2.SetRunResultRequest(result_json=good), CONTEXT
    ))  # fmt: skip
    run = link.state.runs.get(run_id)
    assert run is not None
    assert run.result_json != ""
