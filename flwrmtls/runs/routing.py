"""Message routing on the link: what it accepts, how it stamps it, when it expires, and the
error replies it writes for nodes that cannot answer. Sans-IO: plain values in, decisions out.

The servicers read the facts (the messages a push answers, the ids already used, the nodes
the link knows, the runs still active) from the state, call these functions, and store what
they return; nothing here reads a clock, the state or the network. What the link refuses is
raised as :class:`~flwrmtls.wire.refusals.CallRefused` (its code and status are the
catalogue's, :mod:`flwrmtls.wire.refusals`), and a refused push changes nothing.

Rules:

* From a ServerApp (:func:`route_instructions`): a message belongs to the caller's run (it
  names that run or none), goes to a node the link knows, and has an id, not used before.
  The link stamps it: the run, source 0 (the ServerApp side), created now, and its ttl (its
  own, or :data:`~flwrmtls.wire.bounds.DEFAULT_TTL` when it names none); it expires ttl
  seconds from now.
* From a node (:func:`route_replies`): a reply names the node's own id as its source, answers
  a message sent to that node, and has an id, not used before. A reply to a message whose
  run is not active, or that is answered already (by the node, or by the link for a node gone
  offline), is dropped without a word: the node could not know. The link stamps it: the
  original's run, destination 0, and the node's certificate identity as ``src_identity``
  (what the ServerApp trusts, whatever the node wrote there). It is kept at least
  ``DEFAULT_TTL`` seconds, so a ServerApp reads it even when the original's time was nearly
  up. A reply saying its ClientApp raised (``CLIENT_APP_RAISED``) is a line of its run's log.
* A node that cannot answer (offline: its connection closed, or past its heartbeat grace;
  unregistered; unknown to the link) gets, for each message that awaits its reply, an error
  reply ``NODE_UNAVAILABLE`` naming why (:func:`unavailable_replies`).
* Error codes are the protos' (``common.proto``, ``Error.Code``): one definition for the
  link, the nodes and the apps.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from flwrmtls.proto import common_pb2
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.wire.bounds import DEFAULT_TTL
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = [
    "NodeStatus",
    "Routed",
    "route_instructions",
    "route_replies",
    "unavailable_replies",
]

NodeStatus = tuple[str, float, bool]
"""A node as the state knows it: (identity, online until, unregistered)."""


@dataclass(frozen=True, slots=True)
class Routed:
    """What a push stores: its messages' rows, and the objects each names."""

    rows: list[MessageRow]
    named_objects: list[tuple[int, list[str]]]
    """(destination node, object ids) for a ServerApp's push; (run, object ids) for a node's."""
    raised: list[tuple[int, str]]
    """(run, reason) of each reply saying its ClientApp raised: a line of the run's log."""


def route_instructions(
    run_id: int,
    messages: Iterable[common_pb2.Message],
    *,
    known_nodes: Collection[int],
    used_ids: Collection[str],
    now: float,
) -> Routed:
    """A ServerApp's push for its run ``run_id``: the rows to store, stamped; CallRefused
    (``invalid-message``) naming the first message the link does not route."""
    used = set(used_ids)
    rows = []
    named = []
    for message in messages:
        problem = None
        if message.run_id not in (0, run_id):
            problem = f"message {message.message_id} names run {message.run_id}"
        elif message.dst_node_id not in known_nodes:
            problem = f"message {message.message_id} is for unknown node {message.dst_node_id}"
        elif not message.message_id:
            problem = "a message has no message_id"
        elif message.message_id in used:
            problem = f"message id {message.message_id!r} is already used"
        if problem:
            raise CallRefused(Refusal.INVALID_MESSAGE, problem)
        used.add(message.message_id)
        stamped = common_pb2.Message()
        stamped.CopyFrom(message)
        stamped.run_id = run_id
        stamped.src_node_id = 0
        stamped.created_at = now
        stamped.ttl = message.ttl or DEFAULT_TTL
        rows.append(
            MessageRow(
                message_id=stamped.message_id, run_id=run_id, src_node_id=0,
                dst_node_id=stamped.dst_node_id, reply_to_message_id="", created_at=now,
                expires_at=now + stamped.ttl, proto=stamped.SerializeToString(),
            )
        )  # fmt: skip
        named.append((stamped.dst_node_id, list(stamped.object_ids)))
    return Routed(rows, named, [])


def route_replies(
    replies: Iterable[common_pb2.Message],
    *,
    node_id: int,
    identity: str,
    originals: Mapping[str, MessageRow],
    answered: Collection[str],
    used_ids: Collection[str],
    active_runs: Collection[int],
    now: float,
) -> Routed:
    """Node ``node_id``'s push of replies: the rows to store, stamped with ``identity``.

    ``originals``: the messages the replies answer, by id (those that exist); ``answered``:
    which of them have a reply already; ``used_ids``: which reply ids are taken;
    ``active_runs``: which of the originals' runs are still active. CallRefused names the
    first reply that is not the node's to send (``foreign-message``) or has no usable id
    (``invalid-message``).
    """
    answered = set(answered)
    used = set(used_ids)
    rows = []
    named: list[tuple[int, list[str]]] = []
    raised: list[tuple[int, str]] = []
    for message in replies:
        original = originals.get(message.reply_to_message_id)
        if message.src_node_id != node_id:
            raise CallRefused(
                Refusal.FOREIGN_MESSAGE,
                f"message {message.message_id} claims source node {message.src_node_id}, "
                f"but this connection is node {node_id}",
            )
        if original is None or original.dst_node_id != node_id:
            raise CallRefused(
                Refusal.FOREIGN_MESSAGE,
                f"message {message.message_id} replies to {message.reply_to_message_id!r}, "
                "which was not sent to this node",
            )
        if original.run_id not in active_runs or original.message_id in answered:
            continue  # the run ended, or the link already answered for the node (offline)
        if not message.message_id or message.message_id in used:
            raise CallRefused(
                Refusal.INVALID_MESSAGE,
                f"reply id {message.message_id!r} is empty or already used",
            )
        answered.add(original.message_id)
        used.add(message.message_id)
        stamped = common_pb2.Message()
        stamped.CopyFrom(message)
        stamped.run_id = original.run_id
        stamped.dst_node_id = 0
        stamped.src_identity = identity
        named.append((stamped.run_id, list(stamped.object_ids)))
        rows.append(
            MessageRow(
                message_id=stamped.message_id, run_id=stamped.run_id, src_node_id=node_id,
                dst_node_id=0, reply_to_message_id=stamped.reply_to_message_id,
                created_at=now, expires_at=now + max(stamped.ttl, DEFAULT_TTL),
                proto=stamped.SerializeToString(),
            )
        )  # fmt: skip
        if stamped.HasField("error") and stamped.error.code == common_pb2.Error.CLIENT_APP_RAISED:
            raised.append((stamped.run_id, stamped.error.reason))
    return Routed(rows, named, raised)


def unavailable_replies(
    run_id: int,
    waiting: Iterable[MessageRow],
    status: Mapping[int, NodeStatus],
    *,
    now: float,
    closed: Mapping[int, float] | None = None,
) -> tuple[list[MessageRow], float | None]:
    """``NODE_UNAVAILABLE`` error replies for the messages of ``waiting`` (awaiting their
    replies) whose node cannot answer: offline (``online_until`` passed), unregistered, or
    not in ``status`` at all. ``closed``: node id -> when its connection closed, for nodes
    marked offline for that (the reason says so). Returns them, and the seconds until the
    next node still online could time out (None: no node to watch)."""
    failed = []
    soonest: float | None = None
    for row in waiting:
        identity, online_until, unregistered = status.get(row.dst_node_id, ("", 0.0, False))
        if online_until > now and not unregistered:
            soonest = min(soonest or 1e9, online_until - now)
            continue
        since = _clock_time(online_until)
        closed_at = (closed or {}).get(row.dst_node_id)
        error = common_pb2.Message(
            message_id=f"{row.message_id}-unavailable",
            run_id=run_id,
            src_node_id=row.dst_node_id,
            dst_node_id=0,
            reply_to_message_id=row.message_id,
            created_at=now,
            ttl=DEFAULT_TTL,
            src_identity=identity,
            error=common_pb2.Error(
                code=common_pb2.Error.NODE_UNAVAILABLE,
                reason=(
                    f"node {identity} unregistered"
                    if unregistered
                    else f"node {row.dst_node_id} is not known to the link"
                    if not identity
                    else f"node {identity} went offline (no heartbeat since {since})"
                    if closed_at is None
                    else f"node {identity} went offline (its connection closed at "
                    f"{_clock_time(closed_at)})"
                ),
            ),
        )
        failed.append(
            MessageRow(
                message_id=error.message_id, run_id=run_id, src_node_id=row.dst_node_id,
                dst_node_id=0, reply_to_message_id=row.message_id, created_at=now,
                expires_at=now + DEFAULT_TTL, proto=error.SerializeToString(),
            )
        )  # fmt: skip
    return failed, None if soonest is None else soonest + 0.05


def _clock_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S UTC")
