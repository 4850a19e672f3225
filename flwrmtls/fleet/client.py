"""The Fleet API from the node's side: one channel, typed calls, errors translated once.

An EC-key node signs each call for the link's server key (:mod:`flwrmtls.node.audience`).
When the link refuses a call as ``wrong-audience`` (its server certificate was rotated to a
new key), the node learns the key again from a TLS handshake and retries that call once; every
call here can be retried (a refused call changed nothing on the link).

Every answer is checked here, in one place, against the node's table of what it accepts
(:data:`flwrmtls.wire.bounds.RESPONSE_BOUNDS`), before any of it is used: an answer outside it
raises :class:`BadAnswer` (final for the node: see :mod:`flwrmtls.node.agent`), and an object's
chunks are bounded as they arrive (:func:`flwrmtls.objects.transfer.pull_object_into`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message as ProtoMessage

from flwrmtls import __version__
from flwrmtls.errors import FlwrmtlsError, Refused
from flwrmtls.objects.store import ObjectStore
from flwrmtls.objects.transfer import Reserve, pull_object_into, push_stored_objects
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.proto.objects_pb2 import ObjectChunk, PullObjectRequest
from flwrmtls.wire.bounds import response_problem
from flwrmtls.wire.errors import ConnectionContext, translate_rpc_error
from flwrmtls.wire.metadata import REFUSAL_KEY

__all__ = ["BadAnswer", "FleetClient", "OverQuota", "Session", "SessionEnded"]

_CALL_TIMEOUT = 10.0
_TRANSFER_TIMEOUT = 600.0
_CANCEL_CHECK = 0.25
_WRONG_AUDIENCE = "wrong-audience"
_T = TypeVar("_T")
_M = TypeVar("_M", bound=ProtoMessage)


class SessionEnded(Refused):
    """The link ended this node's session (superseded by a newer one, or forgotten)."""

    def __init__(self, message: str, *, superseded: bool) -> None:
        super().__init__(message)
        self.superseded = superseded


class OverQuota(Refused):
    """The link would not store what this node sent: a run's or the node's storage bound."""


class BadAnswer(FlwrmtlsError):
    """The link answered with a value outside what the protocol allows: the node cannot use
    the answer, and does not guess one in its place."""


class _CheckedStream:
    """A PullObject stream whose chunks are checked as they arrive; ``cancel`` goes through."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[ObjectChunk]:
        return self

    def __next__(self) -> ObjectChunk:
        chunk: ObjectChunk = next(self._stream)
        return _checked(chunk)

    def cancel(self) -> None:
        self._stream.cancel()


def _checked(response: _M) -> _M:
    problem = response_problem(response)
    if problem is not None:
        raise BadAnswer(
            f"the link answered outside the protocol: {problem}; this node cannot use that "
            "answer (is the link a compatible flwrmtls version?)"
        )
    return response


@dataclass(frozen=True, slots=True)
class Session:
    node_id: int
    session_id: str
    identity: str
    heartbeat_interval: float


def _refusal_reason(error: grpc.RpcError) -> str:
    """The ``flwrmtls-refusal`` trailer of a refused call ("" if none)."""
    trailers = getattr(error, "trailing_metadata", lambda: ())() or ()
    return next((str(value) for key, value in trailers if key == REFUSAL_KEY), "")


class FleetClient:
    def __init__(
        self,
        channel: grpc.Channel,
        ctx: ConnectionContext,
        *,
        relearn_audience: Callable[[], object] | None = None,
    ) -> None:
        """``relearn_audience``: an EC-key node's way to learn the link's server key again."""
        self._stub = fleet_pb2_grpc.FleetStub(channel)
        self._ctx = ctx
        self._relearn_audience = relearn_audience

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

    def _call(self, invoke: Callable[[], _T]) -> _T:
        """One call, its failure translated; signed for a stale server key, retried once."""
        try:
            return invoke()
        except grpc.RpcError as error:
            if self._relearn_audience is None or _refusal_reason(error) != _WRONG_AUDIENCE:
                raise self._fail(error) from None
        self._relearn_audience()
        try:
            return invoke()
        except grpc.RpcError as error:
            raise self._fail(error) from None

    def activate(self) -> Session:
        response = _checked(
            self._call(
                lambda: self._stub.ActivateNode(
                    fleet_pb2.ActivateNodeRequest(node_version=__version__),
                    timeout=_CALL_TIMEOUT,
                )
            )
        )
        return Session(
            node_id=response.node_id,
            session_id=response.session_id,
            identity=response.identity,
            heartbeat_interval=response.heartbeat_interval,
        )

    def heartbeat(self, session: Session) -> float:
        """The interval the link expects until the next heartbeat (checked: never 0 or NaN)."""
        response = _checked(
            self._call(
                lambda: self._stub.Heartbeat(
                    fleet_pb2.HeartbeatRequest(session_id=session.session_id),
                    timeout=_CALL_TIMEOUT,
                )
            )
        )
        return float(response.heartbeat_interval)

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
        return self._call(lambda: self._pull(session, wait, active_run_ids, cancel))

    def _pull(
        self,
        session: Session,
        wait: float,
        active_run_ids: Sequence[int],
        cancel: Sequence[threading.Event],
    ) -> tuple[list[common_pb2.Message], list[int]]:
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
        response = _checked(future.result())
        return list(response.messages), list(response.ended_run_ids)

    def push(self, session: Session, messages: Sequence[common_pb2.Message]) -> None:
        self._call(
            lambda: self._stub.PushMessages(
                fleet_pb2.PushMessagesRequest(session_id=session.session_id, messages=messages),
                timeout=_CALL_TIMEOUT,
            )
        )

    def get_run(self, session: Session, run_id: int) -> fleet_pb2.GetRunResponse:
        response: fleet_pb2.GetRunResponse = self._call(
            lambda: self._stub.GetRun(
                fleet_pb2.GetRunRequest(session_id=session.session_id, run_id=run_id),
                timeout=_CALL_TIMEOUT,
            )
        )
        return _checked(response)

    def fetch_object(
        self,
        session: Session,
        object_id: str,
        store: ObjectStore,
        *,
        reserve: Reserve | None = None,
    ) -> None:
        """Copy an object from the link into ``store`` (verified), unless it is there; its
        chunks checked as they arrive and its announced size reserved with ``reserve``
        before a byte is written (QuotaExceeded, ValueError)."""

        def checked_chunks(request: PullObjectRequest, **kwargs: Any) -> _CheckedStream:
            return _CheckedStream(self._stub.PullObject(request, **kwargs))

        self._call(
            lambda: pull_object_into(
                store,
                checked_chunks,
                object_id,
                session_id=session.session_id,
                timeout=_TRANSFER_TIMEOUT,
                reserve=reserve,
            )
        )

    def send_objects(self, session: Session, store: ObjectStore, object_ids: Sequence[str]) -> None:
        """Push the objects of ``store`` the link lacks."""
        self._call(
            lambda: push_stored_objects(
                self._stub,
                store,
                object_ids,
                session_id=session.session_id,
                timeout=_TRANSFER_TIMEOUT,
            )
        )

    def deactivate(self, session: Session) -> None:
        self._call(
            lambda: self._stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=session.session_id),
                timeout=_CALL_TIMEOUT,
            )
        )
