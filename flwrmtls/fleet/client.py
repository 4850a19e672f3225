"""The Fleet API from the node's side: one channel, typed calls, errors translated once."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from flwrmtls import __version__
from flwrmtls.errors import FlwrmtlsError, Refused
from flwrmtls.objects.store import ObjectStore
from flwrmtls.objects.transfer import pull_object_into, push_stored_objects
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.wire.errors import ConnectionContext, translate_rpc_error

__all__ = ["FleetClient", "OverQuota", "Session", "SessionEnded"]

_CALL_TIMEOUT = 10.0
_TRANSFER_TIMEOUT = 600.0
_CANCEL_CHECK = 0.25


class SessionEnded(Refused):
    """The link ended this node's session (superseded by a newer one, or forgotten)."""

    def __init__(self, message: str, *, superseded: bool) -> None:
        super().__init__(message)
        self.superseded = superseded


class OverQuota(Refused):
    """The link would not store what this node sent: a run's or the node's storage bound."""


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

    def replace_channel(self, channel: grpc.Channel) -> None:
        """Use ``channel`` from the next call on (a rotated client certificate)."""
        self._stub = fleet_pb2_grpc.FleetStub(channel)

    def _fail(self, error: grpc.RpcError) -> FlwrmtlsError:
        code = error.code()
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            return SessionEnded(error.details() or "session superseded", superseded=True)
        if code is grpc.StatusCode.NOT_FOUND:
            return SessionEnded(error.details() or "unknown session", superseded=False)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return OverQuota(error.details() or "over a storage bound of the link")
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

    def pull(
        self,
        session: Session,
        *,
        wait: float,
        active_run_ids: Sequence[int],
        cancel: Sequence[threading.Event] = (),
    ) -> tuple[list[common_pb2.Message], list[int]]:
        """Messages for this node (the link waits up to ``wait`` s for one), and which of
        ``active_run_ids`` ended. Returns empty at once when any ``cancel`` event is set."""
        future = self._stub.PullMessages.future(
            fleet_pb2.PullMessagesRequest(
                session_id=session.session_id, wait_seconds=wait,
                active_run_ids=list(active_run_ids),
            ),
            timeout=wait + _CALL_TIMEOUT,
        )  # fmt: skip
        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())
        # The answer wakes this at once; cancel requests are checked every _CANCEL_CHECK.
        while not finished.wait(_CANCEL_CHECK):
            if any(event.is_set() for event in cancel) and future.cancel():  # type: ignore[no-untyped-call]
                return [], []  # cancelled before an answer came: nothing was delivered
        try:
            response = future.result()
        except grpc.RpcError as error:
            raise self._fail(error) from None
        return list(response.messages), list(response.ended_run_ids)

    def push(self, session: Session, messages: Sequence[common_pb2.Message]) -> None:
        try:
            self._stub.PushMessages(
                fleet_pb2.PushMessagesRequest(session_id=session.session_id, messages=messages),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None

    def get_run(self, session: Session, run_id: int) -> fleet_pb2.GetRunResponse:
        try:
            response: fleet_pb2.GetRunResponse = self._stub.GetRun(
                fleet_pb2.GetRunRequest(session_id=session.session_id, run_id=run_id),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None
        return response

    def fetch_object(self, session: Session, object_id: str, store: ObjectStore) -> None:
        """Copy an object from the link into ``store`` (verified), unless it is there."""
        try:
            pull_object_into(
                store, self._stub.PullObject, object_id, session_id=session.session_id,
                timeout=_TRANSFER_TIMEOUT,
            )  # fmt: skip
        except grpc.RpcError as error:
            raise self._fail(error) from None

    def send_objects(self, session: Session, store: ObjectStore, object_ids: Sequence[str]) -> None:
        """Push the objects of ``store`` the link lacks."""
        try:
            push_stored_objects(
                self._stub, store, object_ids, session_id=session.session_id,
                timeout=_TRANSFER_TIMEOUT,
            )  # fmt: skip
        except grpc.RpcError as error:
            raise self._fail(error) from None

    def deactivate(self, session: Session) -> None:
        try:
            self._stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=session.session_id),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.RpcError as error:
            raise self._fail(error) from None
