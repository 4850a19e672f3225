"""Grid: how a ServerApp reaches the nodes of its run.

The link's implementation sends messages over gRPC; :class:`flwrmtls.testing.grid.InProcessGrid`
runs a ClientApp in this process for tests. Both keep these rules:

- ``get_node_ids`` lists the nodes online now; ``wait_for_nodes`` waits up to ``timeout``
  seconds until at least ``minimum`` are online and returns them, or raises
  :class:`NotEnoughNodes`.
- ``create_message`` addresses content from the ServerApp (node id 0) to one node.
- ``send_and_receive`` returns exactly one reply per message sent, in any order: the node's
  reply, or an error reply (``NODE_UNAVAILABLE`` when the node went offline, ``TIMEOUT`` when
  ``timeout`` seconds passed, ``CLIENT_APP_RAISED`` with the traceback). Each reply's metadata
  names the node (``src_node_id``) and its certificate identity (``src_identity``); match a
  reply to its message by ``reply_to_message_id``.
- ``send_and_stream`` sends at once and yields the same replies one by one, each as soon as
  it has arrived (its arrays read), so that the caller can fold it into a result and let it
  go: the Grid keeps no reply it has yielded, and reads at most one ahead. Stop iterating
  early and the replies not yet yielded are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from flwrmtls.app.message import DEFAULT_TTL, Message, Metadata, new_message_id
from flwrmtls.app.records import RecordDict

__all__ = ["DEFAULT_TTL", "Grid", "NotEnoughNodes", "server_message"]


def server_message(
    run_id: int,
    content: RecordDict,
    message_type: str,
    dst_node_id: int,
    group_id: str,
    ttl: float | None = None,
) -> Message:
    """What every Grid's ``create_message`` returns: content from the ServerApp (node 0)."""
    return Message(
        content,
        metadata=Metadata(
            run_id=run_id, message_id=new_message_id(), src_node_id=0, dst_node_id=dst_node_id,
            reply_to_message_id="", group_id=group_id, message_type=message_type,
            ttl=DEFAULT_TTL if ttl is None else ttl, created_at=time.time(),
        ),
    )  # fmt: skip


class NotEnoughNodes(Exception):
    """Fewer nodes were online than wanted, for as long as we were willing to wait."""

    def __init__(self, wanted: int, available: int, waited: float) -> None:
        self.wanted = wanted
        self.available = available
        self.waited = waited
        super().__init__(
            f"wanted {wanted} node{'s' if wanted != 1 else ''}, "
            f"{available} online after waiting {waited:g}s"
        )


class Grid(Protocol):
    @property
    def run_id(self) -> int: ...

    def get_node_ids(self) -> list[int]:
        """The nodes online now."""
        ...

    def wait_for_nodes(self, minimum: int, timeout: float) -> list[int]:
        """At least ``minimum`` online nodes, waiting up to ``timeout`` seconds for them."""
        ...

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message from the ServerApp to ``dst_node_id``; ``ttl`` defaults to DEFAULT_TTL."""
        ...

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Send, then wait for one reply (or error reply) per message."""
        ...

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Send now; yield one reply (or error reply) per message, each as it arrives."""
        ...
