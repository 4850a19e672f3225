"""A Grid that runs a ClientApp in this process: test an app, or a strategy, without a link.

::

    grid = InProcessGrid(client_app, [{"partition-id": 0, "num-partitions": 2},
                                      {"partition-id": 1, "num-partitions": 2}],
                         run_config={"lr": 0.1})
    grid.run_server_app(server_app)

Rules (those of :class:`flwrmtls.app.grid.Grid`, plus what a double needs):

- Nodes have ids 1..N, one :class:`Context` each that lasts for the grid's life, and the
  identity ``"CN=node-<id>"``.
- Every message and every reply goes through ``message_to_proto`` / ``message_from_proto``
  and protobuf bytes, with its objects copied, as over a network; so the node never shares an
  array with the ServerApp, and the codec runs on every message.
- A handler that raises becomes a ``CLIENT_APP_RAISED`` error reply with the traceback.
- ``failing`` injects failures by node id (change it between rounds as you like):
  :attr:`NodeFailure.OFFLINE` -> ``NODE_UNAVAILABLE``, :attr:`NodeFailure.RAISES` -> the
  ClientApp raises, :attr:`NodeFailure.TIMEOUT` -> ``TIMEOUT``. A message to an id with no
  node gets ``NODE_UNAVAILABLE``.
- ``wait_for_nodes`` never sleeps: with fewer nodes than wanted it raises
  :class:`NotEnoughNodes` at once, reporting ``timeout`` as the time waited (no node would
  have come).
- Replies come back in the reverse order of the messages: code that assumes the order of
  replies fails here, as it would one day against a real link. ``send_and_stream`` runs each
  ClientApp only when its reply is asked for.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence

from flwrmtls.app.clientapp import ClientApp
from flwrmtls.app.context import Context, UserConfigValue
from flwrmtls.app.grid import NotEnoughNodes, server_message
from flwrmtls.app.message import (
    Error,
    ErrorCode,
    Message,
    message_from_proto,
    message_to_proto,
)
from flwrmtls.app.records import RecordDict
from flwrmtls.app.serverapp import ServerApp
from flwrmtls.proto import common_pb2

__all__ = ["InProcessGrid", "NodeFailure", "node_identity", "round_trip"]


class NodeFailure(enum.Enum):
    OFFLINE = "offline"
    """Listed as online, but gone when the message arrives: ``NODE_UNAVAILABLE``."""
    RAISES = "raises"
    """Its ClientApp raises ``RuntimeError``: ``CLIENT_APP_RAISED`` with the traceback."""
    TIMEOUT = "timeout"
    """Never answers: ``TIMEOUT``."""


def node_identity(node_id: int) -> str:
    return f"CN=node-{node_id}"


def round_trip(message: Message, *, src_identity: str | None = None) -> Message:
    """``message`` as the other side receives it: through protobuf bytes and copied objects.
    ``src_identity`` is stamped on the way, as the link does."""
    proto, objects = message_to_proto(message)
    if src_identity is not None:
        proto.src_identity = src_identity
    received = common_pb2.Message.FromString(proto.SerializeToString())
    return message_from_proto(received, {oid: bytes(data) for oid, data in objects.items()})


class InProcessGrid:
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, UserConfigValue]],
        run_config: Mapping[str, UserConfigValue],
        *,
        run_id: int = 1,
        failing: Mapping[int, NodeFailure] | None = None,
    ) -> None:
        self.client_app = client_app
        self.run_config = dict(run_config)
        self.contexts = {
            node_id: Context(run_id, node_id, dict(config), dict(run_config))
            for node_id, config in enumerate(node_configs, start=1)
        }
        self.failing: dict[int, NodeFailure] = dict(failing or {})
        self.delivered: list[Message] = []
        """Every message a ClientApp was given, as it received it."""
        self._run_id = run_id

    @property
    def run_id(self) -> int:
        return self._run_id

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def wait_for_nodes(self, minimum: int, timeout: float) -> list[int]:
        node_ids = self.get_node_ids()
        if len(node_ids) < minimum:
            raise NotEnoughNodes(wanted=minimum, available=len(node_ids), waited=timeout)
        return node_ids

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
        """Each message goes through the wire format now; its ClientApp runs when its reply is
        asked for (last message first), so a caller holds one reply at a time."""
        received = [self._receive(message) for message in messages]
        return self._replies(received, timeout)

    def _replies(
        self, received: list[tuple[Message, NodeFailure | None]], timeout: float | None
    ) -> Iterator[Message]:
        while received:  # last message first; each is dropped once answered
            yield self._handle(*received.pop(), timeout)

    def run_server_app(self, server_app: ServerApp) -> Context:
        """Run ``server_app`` against this grid with the run config; return its context."""
        context = Context(self._run_id, 0, {}, dict(self.run_config))
        server_app(self, context)
        return context

    def _receive(self, message: Message) -> tuple[Message, NodeFailure | None]:
        """The message as its node receives it, and how that node fails (as of now)."""
        if message.metadata.run_id != self._run_id:
            raise ValueError(f"message for run {message.metadata.run_id}, not {self._run_id}")
        received = round_trip(message)
        node_id = received.metadata.dst_node_id
        failure = self.failing.get(node_id)
        if node_id in self.contexts and failure in (None, NodeFailure.RAISES):
            self.delivered.append(received)
        return received, failure

    def _handle(
        self, received: Message, failure: NodeFailure | None, timeout: float | None
    ) -> Message:
        node_id = received.metadata.dst_node_id
        if node_id not in self.contexts or failure is NodeFailure.OFFLINE:
            reply = received.create_error_reply(
                Error(ErrorCode.NODE_UNAVAILABLE, f"node {node_id} is offline")
            )
        elif failure is NodeFailure.TIMEOUT:
            waited = "the timeout" if timeout is None else f"{timeout:g}s"
            reply = received.create_error_reply(
                Error(ErrorCode.TIMEOUT, f"node {node_id} did not reply within {waited}")
            )
        else:
            try:
                if failure is NodeFailure.RAISES:
                    raise RuntimeError(f"injected failure on node {node_id}")
                reply = self.client_app.handle(received, self.contexts[node_id])
            except Exception:
                reply = received.create_error_reply(
                    Error(ErrorCode.CLIENT_APP_RAISED, traceback.format_exc())
                )
        identity = node_identity(node_id) if node_id in self.contexts else ""
        return round_trip(reply, src_identity=identity)
