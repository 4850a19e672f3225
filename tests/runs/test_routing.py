"""Message routing as pure functions over values: each message the link must not route is
refused beside the one it routes, and what it routes is stamped by the link, never by the
sender. (Through a real link: tests/fleet/test_rejections.py.)"""

from __future__ import annotations

import grpc
import pytest

from flwrmtls.app.grid import DEFAULT_TTL as GRID_DEFAULT_TTL
from flwrmtls.app.message import DEFAULT_TTL, ErrorCode
from flwrmtls.proto import common_pb2
from flwrmtls.runs.routing import route_instructions, route_replies, unavailable_replies
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.wire.refusals import REFUSALS, CallRefused, Refusal

NOW = 1_000_000.0
RUN = 7


def instruction(message_id: str = "m1", dst: int = 3, **fields: object) -> common_pb2.Message:
    return common_pb2.Message(message_id=message_id, dst_node_id=dst, **fields)  # type: ignore[arg-type]


def stored(message_id: str, dst: int, run_id: int = RUN) -> MessageRow:
    return MessageRow(
        message_id=message_id, run_id=run_id, src_node_id=0, dst_node_id=dst,
        reply_to_message_id="", created_at=NOW - 10, expires_at=NOW + 100, proto=b"",
    )  # fmt: skip


def refused(call: object) -> CallRefused:
    with pytest.raises(CallRefused) as raised:
        call()  # type: ignore[operator]
    return raised.value


def route(*messages: common_pb2.Message, used: tuple[str, ...] = ()) -> list[MessageRow]:
    return route_instructions(RUN, messages, known_nodes={3, 4}, used_ids=used, now=NOW).rows


def test_an_instruction_is_stamped_by_the_link() -> None:
    forged = instruction(src_node_id=9, created_at=1.0, run_id=RUN, object_ids=["a" * 64])
    [row] = route(forged)
    message = common_pb2.Message.FromString(row.proto)
    assert (message.run_id, message.src_node_id, message.created_at) == (RUN, 0, NOW)
    assert (row.run_id, row.src_node_id, row.dst_node_id) == (RUN, 0, 3)
    # No ttl named: the default; one named: its own.
    assert message.ttl == DEFAULT_TTL
    assert row.expires_at == NOW + DEFAULT_TTL
    [short] = route(instruction(ttl=5.0))
    assert short.expires_at == NOW + 5.0
    routed = route_instructions(RUN, [forged], known_nodes={3}, used_ids=(), now=NOW)
    assert routed.named_objects == [(3, ["a" * 64])]


@pytest.mark.parametrize(
    ("bad", "used", "problem"),
    [
        (instruction(run_id=RUN + 1), (), f"names run {RUN + 1}"),
        (instruction(dst=5), (), "is for unknown node 5"),
        (instruction(message_id=""), (), "a message has no message_id"),
        (instruction(message_id="taken"), ("taken",), "'taken' is already used"),
    ],
)
def test_an_instruction_the_link_does_not_route_refuses_the_whole_push(
    bad: common_pb2.Message, used: tuple[str, ...], problem: str
) -> None:
    error = refused(lambda: route(instruction("ok"), bad, used=used))
    assert error.refusal is Refusal.INVALID_MESSAGE
    assert problem in error.details
    assert REFUSALS[error.refusal].status is grpc.StatusCode.INVALID_ARGUMENT
    # Control: the same push without it is routed.
    assert [row.message_id for row in route(instruction("ok"))] == ["ok"]


def test_two_messages_of_one_push_cannot_share_an_id() -> None:
    error = refused(lambda: route(instruction("same"), instruction("same", dst=4)))
    assert "'same' is already used" in error.details


def reply(
    message_id: str = "r1", to: str = "m1", src: int = 3, **fields: object
) -> common_pb2.Message:
    return common_pb2.Message(
        message_id=message_id,
        reply_to_message_id=to,
        src_node_id=src,
        **fields,  # type: ignore[arg-type]
    )


def replies(
    *messages: common_pb2.Message,
    answered: tuple[str, ...] = (),
    used: tuple[str, ...] = (),
    active: tuple[int, ...] = (RUN,),
) -> list[MessageRow]:
    originals = {"m1": stored("m1", 3), "m2": stored("m2", 4)}
    return route_replies(
        messages, node_id=3, identity="CN=node-3", originals=originals, answered=answered,
        used_ids=used, active_runs=active, now=NOW,
    ).rows  # fmt: skip


def test_a_reply_is_stamped_with_the_nodes_identity_and_kept_at_least_the_default_ttl() -> None:
    [row] = replies(reply(src_identity="CN=someone-else", run_id=99, dst_node_id=8, ttl=1.0))
    message = common_pb2.Message.FromString(row.proto)
    assert message.src_identity == "CN=node-3"  # the link's word, not the node's
    assert (message.run_id, message.dst_node_id) == (RUN, 0)
    assert (row.run_id, row.src_node_id, row.dst_node_id) == (RUN, 3, 0)
    assert row.expires_at == NOW + DEFAULT_TTL
    [long] = replies(reply(ttl=DEFAULT_TTL * 2))
    assert long.expires_at == NOW + DEFAULT_TTL * 2


def test_a_reply_that_is_not_the_nodes_to_send_is_refused() -> None:
    as_other = refused(lambda: replies(reply(src=4)))
    assert as_other.refusal is Refusal.FOREIGN_MESSAGE
    assert "claims source node 4, but this connection is node 3" in as_other.details
    for target in ("m2", "no-such-message"):  # another node's message, or none at all
        error = refused(lambda target=target: replies(reply("ok", "m1"), reply(to=target)))
        assert error.refusal is Refusal.FOREIGN_MESSAGE
        assert "which was not sent to this node" in error.details
    assert REFUSALS[Refusal.FOREIGN_MESSAGE].status is grpc.StatusCode.PERMISSION_DENIED
    # Control: its own reply to its own message.
    assert [row.message_id for row in replies(reply())] == ["r1"]


def test_a_reply_needs_an_id_of_its_own() -> None:
    for bad, used in ((reply(message_id=""), ()), (reply(message_id="taken"), ("taken",))):
        error = refused(lambda bad=bad, used=used: replies(bad, used=used))
        assert error.refusal is Refusal.INVALID_MESSAGE
        assert "is empty or already used" in error.details


def test_a_reply_to_an_ended_run_or_an_answered_message_is_dropped_without_a_word() -> None:
    assert replies(reply(), active=()) == []
    assert replies(reply(), answered=("m1",)) == []
    # The second reply to one message in one push is dropped too.
    assert [row.message_id for row in replies(reply("r1"), reply("r2"))] == ["r1"]


def test_a_reply_saying_its_clientapp_raised_is_a_line_of_the_runs_log() -> None:
    raised = reply(error=common_pb2.Error(code=ErrorCode.CLIENT_APP_RAISED, reason="Traceback"))
    other = reply("r2", error=common_pb2.Error(code=ErrorCode.UNKNOWN_MESSAGE_TYPE, reason="x"))
    originals = {"m1": stored("m1", 3)}
    routed = route_replies(
        [raised], node_id=3, identity="CN=n", originals=originals, answered=(),
        used_ids=(), active_runs={RUN}, now=NOW,
    )  # fmt: skip
    assert routed.raised == [(RUN, "Traceback")]
    routed = route_replies(
        [other], node_id=3, identity="CN=n", originals=originals, answered=(),
        used_ids=(), active_runs={RUN}, now=NOW,
    )  # fmt: skip
    assert routed.raised == []


def test_a_node_that_cannot_answer_gets_an_error_reply_naming_why() -> None:
    waiting = [stored("m1", 3), stored("m2", 4), stored("m3", 5), stored("m4", 6)]
    status = {
        3: ("CN=online", NOW + 20, False),
        4: ("CN=offline", NOW - 1, False),
        6: ("CN=gone", NOW + 20, True),
    }
    failed, next_check = unavailable_replies(RUN, waiting, status, now=NOW)
    answers = {row.reply_to_message_id: common_pb2.Message.FromString(row.proto) for row in failed}
    assert set(answers) == {"m2", "m3", "m4"}  # never the online node's
    assert "node CN=offline went offline (no heartbeat since" in answers["m2"].error.reason
    assert answers["m3"].error.reason == "node 5 is not known to the link"
    assert answers["m4"].error.reason == "node CN=gone unregistered"
    for row in failed:
        message = answers[row.reply_to_message_id]
        assert message.error.code == ErrorCode.NODE_UNAVAILABLE
        assert (row.src_node_id, row.dst_node_id, row.expires_at) == (
            message.src_node_id, 0, NOW + DEFAULT_TTL,
        )  # fmt: skip
    assert next_check == pytest.approx(20.05)  # when the online node's grace could end
    assert unavailable_replies(RUN, [stored("m1", 3)], status, now=NOW)[0] == []
    assert unavailable_replies(RUN, [], status, now=NOW) == ([], None)


def test_a_node_whose_connection_closed_gets_an_error_reply_saying_so() -> None:
    """The link marked the node offline when its connection closed (flwrmtls.runs.presence):
    the reason says so, not that a heartbeat lapsed; a node still online is never answered,
    whatever ``closed`` says of it."""
    waiting = [stored("m1", 3), stored("m2", 4)]
    status = {3: ("CN=dead", NOW, False), 4: ("CN=alive", NOW + 20, False)}
    closed = {3: NOW - 0.5, 4: NOW - 0.5}
    failed, _ = unavailable_replies(RUN, waiting, status, now=NOW, closed=closed)
    [answer] = [common_pb2.Message.FromString(row.proto) for row in failed]
    assert answer.reply_to_message_id == "m1"
    assert answer.error.code == ErrorCode.NODE_UNAVAILABLE
    assert answer.error.reason.startswith("node CN=dead went offline (its connection closed at ")
    # Control: without ``closed`` the same node went offline for want of a heartbeat.
    failed, _ = unavailable_replies(RUN, waiting[:1], status, now=NOW)
    [answer] = [common_pb2.Message.FromString(row.proto) for row in failed]
    assert "went offline (no heartbeat since" in answer.error.reason


def test_one_definition_of_the_error_codes_and_of_the_default_ttl() -> None:
    """The protos define the codes; the app library names exactly those."""
    assert {code.name: code.value for code in ErrorCode} == {
        name: value for name, value in common_pb2.Error.Code.items() if value
    }
    assert GRID_DEFAULT_TTL is DEFAULT_TTL
