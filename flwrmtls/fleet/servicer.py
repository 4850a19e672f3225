"""The Fleet API on the link: convert, delegate to the state, translate errors.

The caller's node id comes from its authenticated principal (its certificate), never from the
request; only a link without client authentication falls back to the session's node id.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.interceptor import current_principal
from flwrmtls.clock import Clock
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.linkstate import LinkState, SessionSuperseded, StoredMessage, UnknownSession

__all__ = ["FleetServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]
_DEFAULT_PULL_LIMIT = 100


def message_to_proto(message: StoredMessage) -> common_pb2.Message:
    return common_pb2.Message(
        message_id=message.message_id,
        run_id=message.run_id,
        src_node_id=message.src_node_id,
        dst_node_id=message.dst_node_id,
        message_type=message.message_type,
        reply_to_message_id=message.reply_to_message_id,
        content=message.content,
        created_at=message.created_at,
        ttl=message.ttl,
    )


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(self, state: LinkState, clock: Clock, heartbeat_interval: float) -> None:
        self._state = state
        self._clock = clock
        self._interval = heartbeat_interval

    def _now(self) -> float:
        return self._clock.now().timestamp()

    async def _session_node(self, session_id: str, context: _Context) -> int:
        """The caller's node id, checked against its newest session."""
        principal = current_principal()
        try:
            if principal.node_id is None:
                return self._state.node_of_session(session_id)
            self._state.check_session(principal.node_id, session_id)
            return principal.node_id
        except SessionSuperseded as error:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session superseded: a newer connection from {error.peer_address} activated "
                f"the same identity ({principal.identity})",
            )
        except UnknownSession:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, "unknown session: activate the node again"
            )
        raise AssertionError("unreachable")

    async def ActivateNode(
        self, request: fleet_pb2.ActivateNodeRequest, context: _Context
    ) -> fleet_pb2.ActivateNodeResponse:
        principal = current_principal()
        node_id, session_id = self._state.activate_node(
            node_id=principal.node_id,
            identity=principal.identity,
            organisation=principal.organisation,
            auth_method=principal.auth_method.value,
            cert_fingerprint=principal.fingerprint,
            cert_not_after=principal.not_after.timestamp() if principal.not_after else 0.0,
            peer_address=context.peer(),
            now=self._now(),
            heartbeat_interval=self._interval,
        )
        return fleet_pb2.ActivateNodeResponse(
            node_id=node_id,
            session_id=session_id,
            identity=principal.identity,
            heartbeat_interval=self._interval,
        )

    async def DeactivateNode(
        self, request: fleet_pb2.DeactivateNodeRequest, context: _Context
    ) -> fleet_pb2.DeactivateNodeResponse:
        node_id = await self._session_node(request.session_id, context)
        self._state.deactivate_node(node_id, request.session_id, now=self._now())
        return fleet_pb2.DeactivateNodeResponse()

    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: _Context
    ) -> fleet_pb2.HeartbeatResponse:
        node_id = await self._session_node(request.session_id, context)
        self._state.heartbeat(
            node_id,
            request.session_id,
            now=self._now(),
            heartbeat_interval=self._interval,
            peer_address=context.peer(),
        )
        return fleet_pb2.HeartbeatResponse(heartbeat_interval=self._interval)

    async def PullMessages(
        self, request: fleet_pb2.PullMessagesRequest, context: _Context
    ) -> fleet_pb2.PullMessagesResponse:
        node_id = await self._session_node(request.session_id, context)
        limit = request.max_messages or _DEFAULT_PULL_LIMIT
        messages = self._state.pull_messages(node_id, now=self._now(), limit=limit)
        return fleet_pb2.PullMessagesResponse(messages=[message_to_proto(m) for m in messages])

    async def PushMessages(
        self, request: fleet_pb2.PushMessagesRequest, context: _Context
    ) -> fleet_pb2.PushMessagesResponse:
        node_id = await self._session_node(request.session_id, context)
        for message in request.messages:
            if message.src_node_id != node_id:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"message {message.message_id} claims source node {message.src_node_id}, "
                    f"but this connection is node {node_id}",
                )
        stored = self._state.store_messages(
            StoredMessage(
                message_id=m.message_id,
                run_id=m.run_id,
                src_node_id=node_id,
                dst_node_id=m.dst_node_id,
                message_type=m.message_type,
                reply_to_message_id=m.reply_to_message_id,
                content=m.content,
                created_at=m.created_at,
                ttl=m.ttl,
            )
            for m in request.messages
        )
        return fleet_pb2.PushMessagesResponse(message_ids=stored)
