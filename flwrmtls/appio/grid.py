"""The Grid a ServerApp uses inside its process: ServerAppIo calls with the run's token.

Rules:

* Array bytes go as objects, stored once by the link before the messages that reference them
  are sent (a model broadcast to N nodes is hashed once and stored once). When the link
  shares its object directory (its own ServerApp, same host and OS user), they are written
  there and replies' objects mapped from there without hashing them again: the link checked
  each against its SHA-256 as it received it, and each object is hashed once per host (see
  :mod:`flwrmtls.objects.store`); otherwise the link is asked which objects it lacks and only
  those are pushed over ServerAppIo, and replies' objects are fetched and checked.
* ``send_and_receive`` returns one reply per message: the node's reply, an error reply the
  link made (the node went offline), or a TIMEOUT error reply made here when ``timeout``
  passes. Waiting is a long poll on the link, not a sleep loop.
* ``send_and_stream`` yields those replies one at a time, as they arrive: a reply's objects
  are read (or fetched) while the one before it is with the caller, at most ``READ_AHEAD``
  replies ahead, and nothing here keeps a reply once it is yielded. So a strategy that folds
  each reply in and lets it go holds the model, its accumulator and a reply or two, never N.
  An object that two replies waiting here share is read once.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import grpc

from flwrmtls.app.codec import EncodingCache
from flwrmtls.app.grid import NotEnoughNodes, server_message
from flwrmtls.app.message import (
    Error,
    ErrorCode,
    Message,
    message_from_proto,
    message_to_proto,
)
from flwrmtls.app.records import RecordDict
from flwrmtls.objects.store import ObjectStore
from flwrmtls.objects.transfer import (
    PARALLEL_STREAMS,
    pull_object_bytes,
    push_objects,
    store_shared,
)
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2
from flwrmtls.wire.bounds import LONG_POLL_SECONDS

__all__ = ["READ_AHEAD", "GrpcGrid"]

_TRANSFER_TIMEOUT = 600.0
READ_AHEAD = 1
"""Replies whose objects are read while the caller has the one before them."""


class GrpcGrid:
    def __init__(
        self,
        channel: grpc.Channel,
        metadata: Sequence[tuple[str, str]],
        run_id: int,
        *,
        shared: ObjectStore | None = None,
    ) -> None:
        self._stub = appio_pb2_grpc.ServerAppIoStub(channel)
        self._metadata = tuple(metadata)
        self._run_id = run_id
        self.identities: dict[int, str] = {}
        """Node id -> certificate identity, for nodes seen so far."""
        self._shared = shared
        """The link's object directory, when it shares it: objects are written and read there."""
        self._cursor = 0
        """PullReplies' cursor: replies up to it have been seen."""

    @property
    def run_id(self) -> int:
        return self._run_id

    def _nodes(self, minimum: int, wait: float) -> list[int]:
        response = self._stub.GetNodes(
            appio_pb2.GetNodesRequest(minimum=minimum, wait_seconds=wait),
            metadata=self._metadata, timeout=wait + 30,
        )  # fmt: skip
        for node in response.nodes:
            self.identities[node.node_id] = node.identity
        return [node.node_id for node in response.nodes]

    def get_node_ids(self) -> list[int]:
        return self._nodes(0, 0.0)

    def wait_for_nodes(self, minimum: int, timeout: float) -> list[int]:
        start = time.monotonic()
        while True:
            remaining = timeout - (time.monotonic() - start)
            nodes = self._nodes(minimum, max(0.0, min(remaining, LONG_POLL_SECONDS)))
            if len(nodes) >= minimum:
                return nodes
            if remaining <= 0:
                raise NotEnoughNodes(minimum, len(nodes), timeout)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return server_message(self._run_id, content, message_type, dst_node_id, group_id, ttl)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return list(self.send_and_stream(messages, timeout=timeout))

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        # What waits for its reply is each message's metadata (for a TIMEOUT reply), not its
        # content: once sent, the arrays are the caller's to keep or let go.
        pending = {
            m.metadata.message_id: Message(metadata=m.metadata) for m in self._send(messages)
        }
        return self._replies(pending, timeout)

    def _send(self, messages: Iterable[Message]) -> list[Message]:
        """Store the messages' objects on the link, then push the messages."""
        sent = list(messages)
        protos = []
        objects: dict[str, memoryview] = {}
        cache: EncodingCache = {}  # a model broadcast to N nodes is hashed once, not N times
        for message in sent:
            proto, message_objects = message_to_proto(message, cache)
            protos.append(proto)
            objects.update(message_objects)
        if self._shared is not None:
            store_shared(self._shared, objects)
        else:
            push_objects(self._stub, objects, metadata=self._metadata, timeout=_TRANSFER_TIMEOUT)
        self._stub.PushMessages(
            appio_pb2.PushAppMessagesRequest(messages=protos), metadata=self._metadata,
            timeout=_TRANSFER_TIMEOUT,
        )  # fmt: skip
        return sent

    def _replies(self, pending: dict[str, Message], timeout: float | None) -> Iterator[Message]:
        """Long-poll for the replies and yield each once its objects are read; the next
        READ_AHEAD replies' objects are read in the background meanwhile."""
        start = time.monotonic()
        arrived: deque[common_pb2.Message] = deque()
        reads: dict[str, Future[bytes | memoryview]] = {}
        with ThreadPoolExecutor(PARALLEL_STREAMS, "replies") as pool:
            while pending or arrived:
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                if pending and (remaining is None or remaining > 0):
                    # Wait for replies only when none is ready to hand over.
                    wait = 0.0 if arrived else LONG_POLL_SECONDS
                    if remaining is not None:
                        wait = min(wait, remaining)
                    arrived.extend(self._pull_replies(pending, wait))
                elif not arrived:
                    break  # time is up: the rest get TIMEOUT below
                for proto in itertools.islice(arrived, READ_AHEAD + 1):
                    for object_id in proto.object_ids:
                        if object_id not in reads:
                            reads[object_id] = pool.submit(self._fetch, object_id)
                if not arrived:
                    continue
                proto = arrived.popleft()
                objects = {object_id: reads[object_id].result() for object_id in proto.object_ids}
                still_needed = {oid for later in arrived for oid in later.object_ids}
                for object_id in proto.object_ids:
                    if object_id not in still_needed:
                        reads.pop(object_id, None)
                handed = [self._decode(proto, objects)]
                del objects, proto
                yield handed.pop()  # the caller's now: no name here keeps it while it waits
        for original in pending.values():
            late = original.create_error_reply(
                Error(ErrorCode.TIMEOUT, f"no reply within {timeout or 0:.0f}s")
            )
            late.metadata.src_identity = self.identities.get(original.metadata.dst_node_id, "")
            yield late

    def _pull_replies(self, pending: dict[str, Message], wait: float) -> list[common_pb2.Message]:
        """The replies to ``pending`` stored after the cursor (taken out of ``pending``); late
        replies to earlier rounds are dropped."""
        response = self._stub.PullReplies(
            appio_pb2.PullRepliesRequest(wait_seconds=wait, after=self._cursor),
            metadata=self._metadata, timeout=wait + 30,
        )  # fmt: skip
        self._cursor = max(self._cursor, response.cursor)
        return [
            reply
            for reply in response.replies
            if pending.pop(reply.reply_to_message_id, None) is not None
        ]

    def _fetch(self, object_id: str) -> bytes | memoryview:
        if self._shared is not None:  # the link hashed what it received: mapped, not hashed
            return self._shared.map(object_id)
        return pull_object_bytes(
            self._stub, object_id, metadata=self._metadata, timeout=_TRANSFER_TIMEOUT
        )

    def _decode(self, proto: common_pb2.Message, objects: dict[str, bytes | memoryview]) -> Message:
        if proto.src_identity:
            self.identities[proto.src_node_id] = proto.src_identity
        return message_from_proto(proto, objects)
