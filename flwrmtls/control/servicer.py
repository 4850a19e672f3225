"""The Control API on the link: what the CLI calls."""

from __future__ import annotations

from typing import Any

import grpc.aio

from flwrmtls.clock import Clock
from flwrmtls.proto import control_pb2, control_pb2_grpc
from flwrmtls.state.linkstate import LinkState

__all__ = ["ControlServicer"]


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, state: LinkState, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    async def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.ListNodesResponse:
        records = self._state.list_nodes(now=self._clock.now().timestamp())
        return control_pb2.ListNodesResponse(
            nodes=[
                control_pb2.NodeInfo(
                    node_id=r.node_id,
                    identity=r.identity,
                    organisation=r.organisation,
                    auth_method=r.auth_method,
                    status="online" if r.online else "offline",
                    cert_not_after=r.cert_not_after,
                    last_seen=r.last_seen,
                    created_at=r.created_at,
                    peer_address=r.peer_address,
                    cert_fingerprint=r.cert_fingerprint,
                )
                for r in records
            ]
        )
