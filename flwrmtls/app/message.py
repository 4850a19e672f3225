"""Messages: a unit of work from the ServerApp to a node, or a node's reply.

Rules:

- A message is ``metadata`` (addressing), ``content`` (a :class:`RecordDict`) and ``error``.
  An error reply has an :class:`Error` and empty content; a message never has both.
- A reply swaps source and destination, names the message it answers in
  ``reply_to_message_id``, keeps run, group and message type, gets a new id, and expires when
  the message it answers expires (its ttl is what is left of the original's).
- Node id 0 is the ServerApp side. ``src_identity`` is set by the link, never by the sender:
  it is the certificate identity of the node that sent the message.
- Message types are ``"train"``, ``"evaluate"`` and ``"query"`` (:class:`MessageType`).
- A message names no ttl: it lives :data:`~flwrmtls.wire.bounds.DEFAULT_TTL` seconds (the
  one definition, in ``wire/bounds.py``: the Grid and the link read it).
- Error codes are the protos' (``common.proto``, ``Error.Code``): :class:`ErrorCode` names them.

Build a reply either way (both are Flower's spelling)::

    return msg.create_reply(content)
    return Message(content, reply_to=msg)
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from flwrmtls.app.codec import EncodingCache, decode_record_dict, encode_record_dict
from flwrmtls.app.records import RecordDict
from flwrmtls.proto import common_pb2
from flwrmtls.wire.bounds import DEFAULT_TTL

__all__ = [
    "DEFAULT_TTL",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "message_from_proto",
    "message_to_proto",
    "new_message_id",
]


class MessageType:
    """The message types a ClientApp handles."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"


class ErrorCode(enum.IntEnum):
    """Why a message has no real reply (the values are ``common.proto``'s ``Error.Code``)."""

    CLIENT_APP_RAISED = common_pb2.Error.CLIENT_APP_RAISED
    """The ClientApp raised; the reason holds the traceback."""
    NODE_UNAVAILABLE = common_pb2.Error.NODE_UNAVAILABLE
    """The node went offline, or never was online."""
    TIMEOUT = common_pb2.Error.TIMEOUT
    """No reply within the timeout the ServerApp gave."""
    RUN_ENDED = common_pb2.Error.RUN_ENDED
    """The run was stopped or finished before the reply."""
    UNKNOWN_MESSAGE_TYPE = common_pb2.Error.UNKNOWN_MESSAGE_TYPE
    """The ClientApp has no handler for the message type."""
    LINK_ERROR = common_pb2.Error.LINK_ERROR
    """The link or the node failed to deliver the message or its reply."""


@dataclass(frozen=True)
class Error:
    code: int
    """An :class:`ErrorCode` (plain ``int`` when it came from a newer peer)."""
    reason: str
    """For people: what happened, e.g. a traceback or ``"node 3 went offline"``."""

    @property
    def code_name(self) -> str:
        """``"CLIENT_APP_RAISED"``, or ``"error 42"`` for a code this version does not know."""
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return f"error {self.code}"


@dataclass
class Metadata:
    run_id: int
    message_id: str
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    message_type: str
    ttl: float
    """Seconds after ``created_at`` when the message expires."""
    created_at: float
    """Seconds since the epoch."""
    src_identity: str = ""
    """The sender's certificate identity, set by the link on what it delivers."""


def new_message_id() -> str:
    return uuid.uuid4().hex


def _reply_metadata(original: Metadata) -> Metadata:
    now = time.time()
    return Metadata(
        run_id=original.run_id,
        message_id=new_message_id(),
        src_node_id=original.dst_node_id,
        dst_node_id=original.src_node_id,
        reply_to_message_id=original.message_id,
        group_id=original.group_id,
        message_type=original.message_type,
        ttl=max(0.0, original.created_at + original.ttl - now),
        created_at=now,
    )


class Message:
    """``Message(content, metadata=...)``, or a reply: ``Message(content, reply_to=msg)`` /
    ``Message(error=Error(...), reply_to=msg)``. Give exactly one of ``metadata`` and
    ``reply_to``."""

    __slots__ = ("content", "error", "metadata")

    def __init__(
        self,
        content: RecordDict | None = None,
        *,
        metadata: Metadata | None = None,
        error: Error | None = None,
        reply_to: Message | None = None,
    ) -> None:
        if content is not None and not isinstance(content, RecordDict):
            raise TypeError(f"message content is a RecordDict, not {type(content).__name__}")
        if error is not None and content:
            raise ValueError("a message carries content or an error, not both")
        if reply_to is not None:
            if metadata is not None:
                raise TypeError("give metadata or reply_to, not both")
            metadata = _reply_metadata(reply_to.metadata)
        if metadata is None:
            raise TypeError("a message needs metadata (or reply_to, for a reply)")
        self.metadata: Metadata = metadata
        self.content: RecordDict = content if content is not None else RecordDict()
        self.error: Error | None = error

    def has_error(self) -> bool:
        return self.error is not None

    def create_reply(self, content: RecordDict) -> Message:
        """A reply carrying ``content``."""
        return Message(content, reply_to=self)

    def create_error_reply(self, error: Error) -> Message:
        """A reply saying why there is no real one."""
        return Message(error=error, reply_to=self)

    def __repr__(self) -> str:
        body = f"error={self.error!r}" if self.error else f"content={self.content!r}"
        return f"Message(metadata={self.metadata!r}, {body})"


def message_to_proto(
    message: Message, cache: EncodingCache | None = None
) -> tuple[common_pb2.Message, dict[str, memoryview]]:
    """The wire form and the objects (array bytes) its content references (``cache``: see
    :data:`~flwrmtls.app.codec.EncodingCache`)."""
    metadata = message.metadata
    proto = common_pb2.Message(
        message_id=metadata.message_id,
        run_id=metadata.run_id,
        src_node_id=metadata.src_node_id,
        dst_node_id=metadata.dst_node_id,
        message_type=metadata.message_type,
        reply_to_message_id=metadata.reply_to_message_id,
        created_at=metadata.created_at,
        ttl=metadata.ttl,
        group_id=metadata.group_id,
        src_identity=metadata.src_identity,
    )
    if message.error is not None:
        proto.error.code = message.error.code
        proto.error.reason = message.error.reason
        return proto, {}
    encoded = encode_record_dict(message.content, cache)
    proto.content = encoded.content
    proto.object_ids.extend(encoded.objects)
    return proto, encoded.objects


def message_from_proto(
    proto: common_pb2.Message, objects: Mapping[str, bytes | memoryview]
) -> Message:
    """The message, its arrays read from ``objects`` (``ValueError`` if one is missing)."""
    metadata = Metadata(
        run_id=proto.run_id,
        message_id=proto.message_id,
        src_node_id=proto.src_node_id,
        dst_node_id=proto.dst_node_id,
        reply_to_message_id=proto.reply_to_message_id,
        group_id=proto.group_id,
        message_type=proto.message_type,
        ttl=proto.ttl,
        created_at=proto.created_at,
        src_identity=proto.src_identity,
    )
    if proto.HasField("error"):
        return Message(metadata=metadata, error=Error(proto.error.code, proto.error.reason))
    return Message(decode_record_dict(proto.content, objects), metadata=metadata)
