"""A run as this node knows it, and the error replies the node makes in its ClientApp's place.

Rules:

* A run's state lives on the node's event loop (:mod:`flwrmtls.node.clientapps` reads and
  changes it); only ``cancel`` is read from another thread (an install of its app
  environment in progress stops when it is set).
* A run's ClientApp may read only its run's objects (``NodeRun.objects``): its bundle (added
  at once), the objects named by the messages this node received for the run, and those it
  stored itself.
* The node answers a message itself, with ``LINK_ERROR`` and the reason, when no ClientApp
  can have it (:func:`undelivered_reply`: the run cannot start or cannot run here), and in
  place of a reply the link refused to store (:func:`refused_reply`), so that the ServerApp
  learns of it at once instead of waiting for a reply that never comes.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from flwrmtls.errors import FlwrmtlsError
from flwrmtls.keyvalues import Value
from flwrmtls.proto import common_pb2

__all__ = ["AppUnusable", "NodeRun", "refused_reply", "undelivered_reply"]

_LINK_ERROR = common_pb2.Error.LINK_ERROR


@dataclass
class NodeRun:
    run_id: int
    bundle_hash: str
    run_config: dict[str, Value]
    inbox: deque[common_pb2.Message] = field(default_factory=deque)
    """Messages for the ClientApp, oldest first."""
    received: set[str] = field(default_factory=set)
    """Messages received that the ClientApp may still answer."""
    seen: OrderedDict[str, bool] = field(default_factory=OrderedDict)
    """The last ``SEEN_LIMIT`` message ids received -> whether the ClientApp has pulled it."""
    objects: set[str] = field(default_factory=set)
    """The objects the run's ClientApp may read (its scope; the bundle is added at once)."""
    ended: bool = False
    python: str | None = ""
    """The interpreter its ClientApp runs with ("": the node's own); None while its app
    environment is being prepared."""
    unusable: str = ""
    """Why its ClientApp cannot run on this node (every message gets it as an error reply)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when the run ends: an install of its app environment in progress stops."""
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while its ClientApp starts: the agent's delivery and the end of its environment's
    install may both ask for it, and one process must start, not two."""
    logs_refused: bool = False
    """The link refused this run's log lines from this node: none are sent any more."""

    def __post_init__(self) -> None:
        self.objects.add(self.bundle_hash)


class AppUnusable(FlwrmtlsError):
    """The run's ClientApp cannot run on this node (the message is its reason, in full)."""


def undelivered_reply(
    message: common_pb2.Message, node_id: int, reason: str, now: float
) -> common_pb2.Message:
    """An error reply to ``message``, which this node could not hand to a ClientApp."""
    return common_pb2.Message(
        message_id=uuid.uuid4().hex, run_id=message.run_id, src_node_id=node_id,
        dst_node_id=message.src_node_id, message_type=message.message_type,
        reply_to_message_id=message.message_id, group_id=message.group_id, created_at=now,
        ttl=max(0.0, message.created_at + message.ttl - now),
        error=common_pb2.Error(code=_LINK_ERROR, reason=f"node {node_id}: {reason}"),
    )  # fmt: skip


def refused_reply(reply: common_pb2.Message, reason: str) -> common_pb2.Message:
    """An error reply in place of ``reply``, which the link refused to store."""
    return common_pb2.Message(
        message_id=reply.message_id, run_id=reply.run_id, src_node_id=reply.src_node_id,
        message_type=reply.message_type, reply_to_message_id=reply.reply_to_message_id,
        created_at=reply.created_at, ttl=reply.ttl, group_id=reply.group_id,
        error=common_pb2.Error(code=_LINK_ERROR, reason=f"the link refused the reply: {reason}"),
    )  # fmt: skip
