"""The Fleet API from the node's side: one channel, typed calls, errors translated once."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from flwrmtls import __version__
from flwrmtls.errors import FlwrmtlsError, Refused
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc
from flwrmtls.wire.errors import ConnectionContext, translate_rpc_error

__all__ = ["FleetClient", "Session", "SessionEnded"]

_CALL_TIMEOUT = 10.0


class SessionEnded(Refused):
    """The link ended this node's session (superseded by a newer one, or forgotten)."""

    def __init__(self, message: str, *, superseded: bool) -> None:
        super().__init__(message)
        self.superseded = superseded


@dataclass(frozen=True, slots=True)
class Session:
    node_id: int
    session_id: str
    identity: str
    heartbeat_interval: float


class FleetClient:
    def __init__(self, channel: grpc.Channel, ctx: ConnectionContext) -> None:
        self._stub = fleet_pb2_grpc.FleetStub(channel)
        self._ctx = ctx

    def _fail(self, error: grpc.RpcError) -> FlwrmtlsError:
        code = error.code()
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            return SessionEnded(error.details() or "session superseded", superseded=True)
        if code is grpc.StatusCode.NOT_FOUND:
            return SessionEnded(error.details() or "unknown session", superseded=False)
        return translate_rpc_error(error, self._ctx)

    def activate(self) -> Session:
        try:
            response = self._stub.ActivateNode(
                fleet_pb2.ActivateNodeRequest(node_version=__version__), timeout=_CALL_TIMEOUT
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None
        return Session(
            node_id=response.node_id,
            session_id=response.session_id,
            identity=response.identity,
            heartbeat_interval=response.heartbeat_interval,
        )

    def heartbeat(self, session: Session) -> float:
        try:
            response = self._stub.Heartbeat(
                fleet_pb2.HeartbeatRequest(session_id=session.session_id), timeout=_CALL_TIMEOUT
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None
        return response.heartbeat_interval

    def deactivate(self, session: Session) -> None:
        try:
            self._stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=session.session_id),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None
