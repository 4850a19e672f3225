"""ServerAppIo on the link: what a run's ServerApp process calls, with its run token.

Rules:

* The run is the token's run: requests never name it, and a message naming another run is
  refused. A token stops working when its run ends (the run table deletes its hash).
* A message may only go to a node the link knows (the rules of routing and stamping are
  :mod:`flwrmtls.runs.routing`'s), and only once the objects it references are the run's
  (the ServerApp pushes the missing ones first; with a shared object directory, writing them
  there is enough). The objects a ServerApp reads, pushes and asks about are
  its run's (see :mod:`flwrmtls.runs.linkobjects`); they count against the run's quota.
* A push is one transaction: its messages, and the rows that make their objects the run's
  and readable by their nodes, are stored whole or not at all.
* A node that goes offline while a message waits for its reply gets an error reply
  (``NODE_UNAVAILABLE``): within a second when its connection closes (a dead process's
  connections close at once; :mod:`flwrmtls.runs.presence`), else once its heartbeat grace
  has passed, so a ServerApp learns of a node lost without a word within a bounded time (2.5
  heartbeat intervals; see ``--heartbeat-interval``).
* PullReplies waits (long poll) until a reply or an error exists, never by a fixed delay. It
  returns the run's replies after the caller's cursor, so a call costs what is new, not what
  is still awaited: a round to N nodes costs the link O(N), not O(N^2). Which awaited nodes
  went offline is checked at most every ``OFFLINE_RECHECK`` seconds per run (sooner when a
  node's heartbeat grace ends, at once when a node's connection closed).
* SetRunResult keeps only a result of the shape the app library writes
  (:mod:`flwrmtls.app.runresult`: bounded, finite, canonical); anything else is refused
  (``invalid-request``, INVALID_ARGUMENT) and nothing is stored. The reason is kept up to
  4,000 characters (``flwrmtls.runs.serverapps.REASON_LIMIT``).
* Refusals are raised as the error catalogue's (:mod:`flwrmtls.wire.refusals`), which answers
  them in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from flwrmtls.app.runresult import ResultError, check_result
from flwrmtls.auth.caller import current_principal
from flwrmtls.clock import Clock
from flwrmtls.keyvalues import values_to_proto
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.objects.serving import answer_missing, answer_pull, answer_push, fixed_scope
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, objects_pb2
from flwrmtls.runs.linkobjects import LinkObjects, UnknownObjects
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.presence import Presence
from flwrmtls.runs.routing import route_instructions, unavailable_replies
from flwrmtls.runs.serverapps import ServerApps
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.wire.bounds import long_poll_seconds
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["ServerAppIoServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]
OFFLINE_RECHECK = 0.5
"""Seconds between two checks of a run's awaited nodes (the check reads every awaited message)."""


class ServerAppIoServicer(appio_pb2_grpc.ServerAppIoServicer):
    def __init__(
        self,
        state: LinkState,
        clock: Clock,
        *,
        notifier: Notifier,
        objects: LinkObjects,
        runs: ServerApps,
        presence: Presence | None = None,
        share_objects: bool = True,
    ) -> None:
        self._state = state
        self._clock = clock
        self._notifier = notifier
        self._objects = objects
        self._runs = runs
        self._share_objects = share_objects
        """Tell ServerApps the object directory, so array bytes skip the ServerAppIo hop."""
        self._offline_check_at: dict[int, float] = {}
        """Run id -> monotonic time of its next check for awaited nodes that went offline."""
        self._presence = presence
        self._drops_seen: dict[int, int] = {}
        """Run id -> the presence generation of its last check (a newer one: check now)."""

    def _now(self) -> float:
        return self._clock.now().timestamp()

    @staticmethod
    def _run_id() -> int:
        run_id = current_principal().run_id
        assert run_id is not None, "the policy table admits only run tokens here"
        return run_id

    async def GetRun(
        self, request: appio_pb2.GetAppRunRequest, context: _Context
    ) -> appio_pb2.GetAppRunResponse:
        run = self._state.runs.get(self._run_id())
        assert run is not None
        return appio_pb2.GetAppRunResponse(
            run_id=run.run_id, bundle_hash=run.bundle_hash,
            run_config=values_to_proto(run.run_config),
            object_directory=(  # absolute: the ServerApp works in its own directory
                str(self._objects.store.directory.resolve()) if self._share_objects else ""
            ),
        )  # fmt: skip

    async def GetNodes(
        self, request: appio_pb2.GetNodesRequest, context: _Context
    ) -> appio_pb2.GetNodesResponse:
        nodes = await self._notifier.long_poll(
            ("nodes",), long_poll_seconds(request.wait_seconds),
            lambda: self._state.online_nodes(now=self._now()),
            ready=lambda nodes: len(nodes) >= request.minimum, clock=self._clock,
        )  # fmt: skip
        return appio_pb2.GetNodesResponse(
            nodes=[appio_pb2.NodeRef(node_id=n, identity=identity) for n, identity in nodes]
        )

    async def PushMessages(
        self, request: appio_pb2.PushAppMessagesRequest, context: _Context
    ) -> appio_pb2.PushAppMessagesResponse:
        run_id = self._run_id()
        now = self._now()
        routed = route_instructions(
            run_id, request.messages,
            known_nodes=self._state.node_status([m.dst_node_id for m in request.messages], now=now),
            used_ids=self._state.messages.taken(m.message_id for m in request.messages), now=now,
        )  # fmt: skip
        run = self._state.runs.get(run_id)
        assert run is not None
        try:
            with self._state.transaction():  # the batch and its objects' rows: whole or absent
                self._objects.accept_run_messages(
                    run_id, routed.named_objects, bundle_hash=run.bundle_hash,
                    shared=self._share_objects,
                )  # fmt: skip
                self._state.messages.store(routed.rows)
        except UnknownObjects as error:
            raise CallRefused(
                Refusal.OBJECTS_NOT_PUSHED, f"messages reference objects not pushed: {error}"
            ) from None
        except QuotaExceeded as error:
            raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None
        for row in routed.rows:
            self._notifier.notify(("node", row.dst_node_id))
        return appio_pb2.PushAppMessagesResponse(message_ids=[r.message_id for r in routed.rows])

    async def PullReplies(
        self, request: appio_pb2.PullRepliesRequest, context: _Context
    ) -> appio_pb2.PullRepliesResponse:
        run_id = self._run_id()

        def look() -> list[tuple[int, bytes]]:
            replies = self._state.messages.replies_after(run_id, request.after)
            if not replies and self._check_offline(run_id):  # it stored error replies
                replies = self._state.messages.replies_after(run_id, request.after)
            return replies

        replies = await self._notifier.long_poll(
            ("run", run_id), long_poll_seconds(request.wait_seconds), look, clock=self._clock,
            recheck_in=lambda: self._offline_check_at[run_id] - self._clock.monotonic(),
        )  # fmt: skip
        return appio_pb2.PullRepliesResponse(
            replies=[common_pb2.Message.FromString(proto) for _, proto in replies],
            cursor=replies[-1][0] if replies else request.after,
        )

    def _check_offline(self, run_id: int) -> bool:
        """When due, store error replies for the run's awaited nodes that went offline;
        returns whether it stored any."""
        now = self._clock.monotonic()
        drops = self._presence.generation if self._presence is not None else 0
        if now < self._offline_check_at.get(run_id, 0.0) and self._drops_seen.get(run_id) == drops:
            return False
        self._drops_seen[run_id] = drops
        waiting = self._state.messages.unanswered(run_id, now=self._now())
        stored, next_check = self._fail_offline(run_id, waiting)
        if len(self._offline_check_at) > 256:  # forget runs that ended
            active = {run.run_id for run in self._state.runs.active()}
            for ended in [r for r in self._offline_check_at if r not in active]:
                del self._offline_check_at[ended]
                self._drops_seen.pop(ended, None)
        self._offline_check_at[run_id] = now + min(OFFLINE_RECHECK, next_check or OFFLINE_RECHECK)
        return stored

    def _fail_offline(self, run_id: int, waiting: list[MessageRow]) -> tuple[bool, float | None]:
        """Store NODE_UNAVAILABLE replies for messages whose node cannot answer.

        Returns whether it stored any, and the seconds until the next waited-for node could
        time out (None: no node to watch).
        """
        now = self._now()
        status = self._state.node_status([row.dst_node_id for row in waiting], now=now)
        closed = self._presence.closed_at if self._presence is not None else {}
        failed, next_check = unavailable_replies(run_id, waiting, status, now=now, closed=closed)
        if failed:
            self._state.messages.store(failed)
        return bool(failed), next_check

    async def SetRunResult(
        self, request: appio_pb2.SetRunResultRequest, context: _Context
    ) -> appio_pb2.SetRunResultResponse:
        result = ""
        if request.result_json:
            try:
                result = check_result(request.result_json)
            except ResultError as error:
                raise CallRefused(Refusal.INVALID_REQUEST, f"run result: {error}") from None
        self._runs.report(self._run_id(), request.failed, request.reason, result)
        return appio_pb2.SetRunResultResponse()

    async def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: _Context
    ) -> AsyncIterator[objects_pb2.ObjectChunk]:
        scope = self._objects.run_scope(self._run_id())
        async for chunk in answer_pull(
            self._objects.store, scope, request.object_id, self._objects.transfers
        ):
            yield chunk

    async def PushObject(
        self, request_iterator: AsyncIterator[objects_pb2.ObjectChunk], context: _Context
    ) -> objects_pb2.PushObjectResponse:
        scope = fixed_scope(self._objects.run_scope(self._run_id()))
        response, _ = await answer_push(
            self._objects.store, request_iterator, scope, self._objects.transfers
        )
        return response

    async def MissingObjects(
        self, request: objects_pb2.MissingObjectsRequest, context: _Context
    ) -> objects_pb2.MissingObjectsResponse:
        scope = self._objects.run_scope(self._run_id())
        return await answer_missing(self._objects.store, scope, request.object_ids)
