"""InProcessGrid: a real Grid that runs a ClientApp in this process, with failure injection."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flwrmtls.app import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    ErrorCode,
    Message,
    MetricRecord,
    NotEnoughNodes,
    RecordDict,
)
from flwrmtls.testing.grid import InProcessGrid, NodeFailure


def echo_app() -> ClientApp:
    """Replies with its node id, a count of messages kept in context.state, and arrays + 1."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        seen = context.state.config_records.get("seen", ConfigRecord({"count": 0}))
        count = seen["count"]
        assert isinstance(count, int)
        context.state["seen"] = ConfigRecord({"count": count + 1})
        arrays = ArrayRecord({k: v + 1 for k, v in msg.content.array_records["arrays"].items()})
        metrics = MetricRecord({"node": context.node_id, "count": count + 1})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        raise ZeroDivisionError("evaluate blew up on purpose")

    return app


def send(grid: InProcessGrid, node_ids: list[int], message_type: str = "train") -> list[Message]:
    arrays = ArrayRecord({"w": np.zeros(3)})
    messages = [
        grid.create_message(RecordDict({"arrays": arrays}), message_type, node_id, "1")
        for node_id in node_ids
    ]
    replies = grid.send_and_receive(messages, timeout=5.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(
        m.metadata.message_id for m in messages
    )
    return replies


def test_nodes_and_waiting() -> None:
    grid = InProcessGrid(echo_app(), [{"p": 0}, {"p": 1}, {"p": 2}], {"lr": 0.1}, run_id=9)
    assert grid.run_id == 9
    assert grid.get_node_ids() == [1, 2, 3]
    assert grid.wait_for_nodes(3, timeout=10.0) == [1, 2, 3]
    started = time.monotonic()
    with pytest.raises(NotEnoughNodes, match="wanted 4 nodes, 3 online after waiting 10s") as e:
        grid.wait_for_nodes(4, timeout=10.0)
    assert time.monotonic() - started < 1.0  # no sleeping
    assert (e.value.wanted, e.value.available, e.value.waited) == (4, 3, 10.0)
    assert grid.contexts[2].node_config == {"p": 1}
    assert grid.contexts[2].run_config == {"lr": 0.1}


def test_replies_name_their_node_and_identity_and_come_in_another_order() -> None:
    grid = InProcessGrid(echo_app(), [{}, {}, {}], {})
    replies = send(grid, [1, 2, 3])
    assert [r.metadata.src_node_id for r in replies] == [3, 2, 1]
    for reply in replies:
        node_id = reply.metadata.src_node_id
        assert reply.metadata.src_identity == f"CN=node-{node_id}"
        assert reply.metadata.dst_node_id == 0
        assert reply.content.metric_records["metrics"]["node"] == node_id


def test_messages_cross_a_codec_and_node_state_lasts() -> None:
    grid = InProcessGrid(echo_app(), [{}], {})
    arrays = ArrayRecord({"w": np.zeros(3)})
    message = grid.create_message(RecordDict({"arrays": arrays}), "train", 1, "1")
    (reply,) = grid.send_and_receive([message])
    received = grid.delivered[0].content.array_records["arrays"]["w"]
    assert not np.shares_memory(received, arrays["w"])  # the node got a copy off the wire
    assert not received.flags.writeable
    np.testing.assert_array_equal(reply.content.array_records["arrays"]["w"], np.ones(3))
    (again,) = send(grid, [1])
    assert again.content.metric_records["metrics"]["count"] == 2


def test_a_raising_client_app_becomes_an_error_reply_with_the_traceback() -> None:
    grid = InProcessGrid(echo_app(), [{}], {})
    (reply,) = send(grid, [1], "evaluate")
    assert reply.error is not None
    assert reply.error.code == ErrorCode.CLIENT_APP_RAISED
    assert "Traceback" in reply.error.reason
    assert "in evaluate" in reply.error.reason
    assert reply.error.reason.strip().endswith("ZeroDivisionError: evaluate blew up on purpose")
    assert reply.metadata.src_identity == "CN=node-1"


def test_injected_failures() -> None:
    grid = InProcessGrid(
        echo_app(),
        [{}, {}, {}, {}],
        {},
        failing={2: NodeFailure.OFFLINE, 3: NodeFailure.RAISES, 4: NodeFailure.TIMEOUT},
    )
    replies = {r.metadata.src_node_id: r for r in send(grid, [1, 2, 3, 4, 9])}
    assert replies[1].error is None
    codes = {node: r.error.code for node, r in replies.items() if r.error is not None}
    assert codes == {
        2: ErrorCode.NODE_UNAVAILABLE,
        3: ErrorCode.CLIENT_APP_RAISED,
        4: ErrorCode.TIMEOUT,
        9: ErrorCode.NODE_UNAVAILABLE,
    }
    error_3, error_4 = replies[3].error, replies[4].error
    assert error_3 is not None
    assert "RuntimeError: injected failure on node 3" in error_3.reason
    assert error_4 is not None
    assert "within 5s" in error_4.reason
    assert replies[9].metadata.src_identity == ""  # no such node: no identity
    assert [m.metadata.dst_node_id for m in grid.delivered] == [1, 3]
    grid.failing.clear()  # the node is back
    assert all(r.error is None for r in send(grid, [2, 3, 4]))
