"""Messages: replies, error replies, and the wire form."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flwrmtls.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    ErrorCode,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)
from flwrmtls.app.message import message_from_proto, message_to_proto
from flwrmtls.proto import common_pb2


def a_message(content: RecordDict | None = None, ttl: float = 600.0) -> Message:
    metadata = Metadata(
        run_id=7,
        message_id="m-1",
        src_node_id=0,
        dst_node_id=42,
        reply_to_message_id="",
        group_id="3",
        message_type=MessageType.TRAIN,
        ttl=ttl,
        created_at=time.time(),
    )
    return Message(content or RecordDict(), metadata=metadata)


def test_a_reply_swaps_source_and_destination_and_keeps_run_and_group() -> None:
    message = a_message()
    content = RecordDict({"config": ConfigRecord({"x": 1})})
    for reply in [message.create_reply(content), Message(content, reply_to=message)]:
        assert reply.metadata.src_node_id == 42
        assert reply.metadata.dst_node_id == 0
        assert reply.metadata.reply_to_message_id == "m-1"
        assert reply.metadata.run_id == 7
        assert reply.metadata.group_id == "3"
        assert reply.metadata.message_type == "train"
        assert reply.metadata.message_id not in ("", "m-1")
        assert len(reply.metadata.message_id) == 32
        assert reply.metadata.src_identity == ""
        assert 590.0 < reply.metadata.ttl <= 600.0  # what is left of the original's
        assert reply.content is content
        assert not reply.has_error()
    assert message.create_reply(content).metadata.message_id != (
        message.create_reply(content).metadata.message_id
    )


def test_a_reply_expires_with_the_message_it_answers() -> None:
    expired = a_message(ttl=10.0)
    expired.metadata.created_at -= 60.0
    assert expired.create_reply(RecordDict()).metadata.ttl == 0.0


def test_an_error_reply_has_no_content() -> None:
    message = a_message(RecordDict({"c": ConfigRecord({"x": 1})}))
    error = Error(ErrorCode.CLIENT_APP_RAISED, "Traceback ...\nValueError: boom")
    for reply in [message.create_error_reply(error), Message(error=error, reply_to=message)]:
        assert reply.has_error()
        assert reply.error == error
        assert len(reply.content) == 0
        assert reply.metadata.reply_to_message_id == "m-1"
        assert reply.metadata.dst_node_id == 0


def test_constructor_refuses_contradictions() -> None:
    message = a_message()
    with pytest.raises(ValueError, match="content or an error, not both"):
        Message(RecordDict({"c": ConfigRecord()}), error=Error(1, "x"), reply_to=message)
    with pytest.raises(TypeError, match="needs metadata"):
        Message(RecordDict())
    with pytest.raises(TypeError, match="not both"):
        Message(RecordDict(), metadata=message.metadata, reply_to=message)
    with pytest.raises(TypeError, match="content is a RecordDict"):
        Message({"a": 1}, reply_to=message)  # type: ignore[arg-type]


def test_error_code_names() -> None:
    assert Error(ErrorCode.NODE_UNAVAILABLE, "").code_name == "NODE_UNAVAILABLE"
    assert Error(2, "").code_name == "NODE_UNAVAILABLE"
    assert Error(42, "").code_name == "error 42"
    assert [code.value for code in ErrorCode] == [1, 2, 3, 4, 5, 6]


def _wire(message: Message) -> tuple[common_pb2.Message, dict[str, bytes]]:
    proto, objects = message_to_proto(message)
    return (
        common_pb2.Message.FromString(proto.SerializeToString()),
        {oid: bytes(data) for oid, data in objects.items()},
    )


def test_proto_round_trip_keeps_metadata_content_and_identity() -> None:
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    message = a_message(
        RecordDict(
            {
                "arrays": ArrayRecord({"w": weights, "same": weights.copy()}),
                "config": ConfigRecord({"lr": 0.1}),
            }
        )
    )
    message.metadata.src_identity = "CN=node-42,O=Hospital A"
    proto, objects = _wire(message)
    assert list(proto.object_ids) == list(objects)
    assert len(objects) == 1  # "w" and "same" are one object
    received = message_from_proto(proto, objects)
    assert received.metadata == message.metadata
    assert received.content == message.content
    assert received.error is None
    assert not proto.HasField("error")


def test_proto_round_trip_of_an_error_reply() -> None:
    reply = a_message().create_error_reply(Error(ErrorCode.TIMEOUT, "no reply in 30s"))
    reply.metadata.src_identity = "CN=node-42"
    proto, objects = _wire(reply)
    assert objects == {}
    assert proto.content == b""
    assert list(proto.object_ids) == []
    received = message_from_proto(proto, {})
    assert received.error == Error(ErrorCode.TIMEOUT, "no reply in 30s")
    assert received.has_error()
    assert len(received.content) == 0
    assert received.metadata == reply.metadata


def test_proto_round_trip_needs_the_objects() -> None:
    message = a_message(RecordDict({"arrays": ArrayRecord({"w": np.ones(3)})}))
    proto, _ = _wire(message)
    with pytest.raises(ValueError, match="is missing"):
        message_from_proto(proto, {})
