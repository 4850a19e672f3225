"""The Grid a ServerApp uses inside its process: ServerAppIo calls with the run's token.

Rules:

* Array bytes go as objects, stored once by the link before the messages that reference them
  are sent (a model broadcast to N nodes is hashed once and stored once). When the link
  shares its object directory (its own ServerApp, same host and OS user), they are written
  there and replies' objects read from there, each checked against its SHA-256; otherwise
  the link is asked which objects it lacks and only those are pushed over ServerAppIo.
* ``send_and_receive`` returns one reply per message: the node's reply, an error reply the
  link made (the node went offline), or a TIMEOUT error reply made here when ``timeout``
  passes. Waiting is a long poll on the link, not a sleep loop.
* Reply objects identical across nodes are fetched once, each as soon as its reply arrives.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
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
    in_parallel,
    pull_object_bytes,
    push_objects,
)
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2
from flwrmtls.wire.bounds import LONG_POLL_SECONDS

__all__ = ["GrpcGrid"]

_TRANSFER_TIMEOUT = 600.0


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
        sent = list(messages)
        protos = []
        objects: dict[str, memoryview] = {}
        cache: EncodingCache = {}  # a model broadcast to N nodes is hashed once, not N times
        for message in sent:
            proto, message_objects = message_to_proto(message, cache)
            protos.append(proto)
            objects.update(message_objects)
        if self._shared is not None:
            shared = self._shared
            in_parallel(lambda item: shared.put_hashed(item[1], item[0]), objects.items())
        else:
            push_objects(self._stub, objects, metadata=self._metadata, timeout=_TRANSFER_TIMEOUT)
        self._stub.PushMessages(
            appio_pb2.PushAppMessagesRequest(messages=protos), metadata=self._metadata,
            timeout=_TRANSFER_TIMEOUT,
        )  # fmt: skip
        replies = self._collect({m.metadata.message_id: m for m in sent}, timeout)
        return replies

    def _collect(self, pending: dict[str, Message], timeout: float | None) -> list[Message]:
        """Long-poll for the replies; each reply's objects are fetched as soon as it arrives
        (in the background, several at a time, each distinct object once), so the transfers
        overlap the wait for slower nodes instead of all starting after the last reply."""
        start = time.monotonic()
        received: list[common_pb2.Message] = []
        fetches: dict[str, Future[bytes | memoryview]] = {}
        with ThreadPoolExecutor(PARALLEL_STREAMS, "replies") as pool:
            while pending:
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                if remaining is not None and remaining <= 0:
                    break
                wait = LONG_POLL_SECONDS if remaining is None else min(remaining, LONG_POLL_SECONDS)
                response = self._stub.PullReplies(
                    appio_pb2.PullRepliesRequest(wait_seconds=wait, after=self._cursor),
                    metadata=self._metadata, timeout=wait + 30,
                )  # fmt: skip
                self._cursor = max(self._cursor, response.cursor)
                for reply in response.replies:  # late replies to earlier rounds are dropped
                    if pending.pop(reply.reply_to_message_id, None) is None:
                        continue
                    received.append(reply)
                    for object_id in reply.object_ids:
                        if object_id not in fetches:
                            fetches[object_id] = pool.submit(self._fetch, object_id)
            objects = {object_id: fetch.result() for object_id, fetch in fetches.items()}
        replies = [self._decode(proto, objects) for proto in received]
        for original in pending.values():
            late = original.create_error_reply(
                Error(ErrorCode.TIMEOUT, f"no reply within {timeout or 0:.0f}s")
            )
            late.metadata.src_identity = self.identities.get(original.metadata.dst_node_id, "")
            replies.append(late)
        return replies

    def _fetch(self, object_id: str) -> bytes | memoryview:
        if self._shared is not None:
            return self._shared.read_verified(object_id)
        return pull_object_bytes(
            self._stub, object_id, metadata=self._metadata, timeout=_TRANSFER_TIMEOUT
        )

    def _decode(self, proto: common_pb2.Message, objects: dict[str, bytes | memoryview]) -> Message:
        if proto.src_identity:
            self.identities[proto.src_node_id] = proto.src_identity
        return message_from_proto(proto, objects)
