"""The Fleet API from the node's side: one channel, typed calls, errors translated once.

Rules:

* A refusal the link states with a code (:mod:`flwrmtls.wire.refusals`) becomes this node's
  exception for it, through one table (:data:`NODE_ERRORS`); the status code alone never
  decides. Only the session codes end a session (:class:`SessionEnded`): a run that is not
  active or has no work for this node (:class:`RunUnavailable`) and a missing object
  (:class:`ObjectMissing`) concern one message or one run, never the session. Anything
  else goes through :func:`~flwrmtls.wire.errors.translate_rpc_error`.
* A pull carries the ids of the messages this node has handed to their ClientApps since its
  last pull (their acknowledgement; see :mod:`flwrmtls.fleet.servicer`): if the pull fails
  they are sent again with the next one (acknowledging twice changes nothing).

A download broken off on the way is fetched again from its first byte (:func:`fetch_again`):
after ``CANCELLED``, or ``UNAVAILABLE`` unless it is grpc's word for a connection never made
before any chunk arrived (:func:`~flwrmtls.wire.errors.never_connected`: nothing listening, a
handshake refused, which the agent's reconnect handles), and never with a refusal stated. So
a stream cut on the way (the link or a proxy resetting it, a connection lost while the
transfer waited for its turn) and the link's own try-later answers (too many calls at once, an
OCSP decision pending, its storage failing for a moment) are asked again after a pause: the
node has no later chance at a ClientApp's arrays, and one of them must not fail a round. Up
to :data:`FETCH_ATTEMPTS` tries, :data:`FETCH_RETRY_DELAY` seconds apart and doubling, the
series within one transfer's time (:data:`_TRANSFER_TIMEOUT`; a try is only started with
:data:`_MIN_TRY` seconds of it left). A refusal, an answer outside the protocol, a size that
does not match or a transfer out of time is not fetched again here.

An EC-key node signs each call for the link's server key (:mod:`flwrmtls.node.audience`).
When the link refuses a call as ``wrong-audience`` (its server certificate was rotated to a
new key), the node learns the key again from a TLS handshake and retries that call once; every
call here can be retried (a refused call changed nothing on the link).

Every answer is checked here, in one place, against the node's table of what it accepts
(:data:`flwrmtls.wire.bounds.RESPONSE_BOUNDS`), before any of it is used: an answer outside it
raises :class:`BadAnswer` (final for the node: see :mod:`flwrmtls.node.agent`), and an object's
chunks are bounded as they arrive (:func:`flwrmtls.objects.transfer.pull_object_into`).

::

    Refused
     ├── SessionEnded      unknown-session (activate again), session-superseded (stop)
     ├── RunUnavailable    run-ended / run-not-for-node: drop what this node holds of the run
     ├── ObjectMissing     no-object
     ├── OverQuota         over-quota
     ├── RequestRefused    invalid-message, foreign-message, objects-not-pushed,
                           invalid-request: what this node sent is not the link's to take
                           (a bug here, never its credentials): final for it
     └── RenewalRefused    renewal-refused, not-enrolling: this node's certificate is
                           not renewed now (it keeps the one it has)
    LinkUnreachable        ocsp-unavailable: the link has no usable OCSP answer for this
                           node's certificate yet: retried, as a link that is down
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message as ProtoMessage

from flwrmtls import __version__
from flwrmtls.errors import FlwrmtlsError, LinkUnreachable, Refused
from flwrmtls.objects.store import ObjectStore
from flwrmtls.objects.transfer import Reserve, pull_object_into, push_stored_objects
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc
from flwrmtls.proto.objects_pb2 import ObjectChunk, PullObjectRequest
from flwrmtls.wire.bounds import response_problem
from flwrmtls.wire.errors import ConnectionContext, call, never_connected, rpc_failure
from flwrmtls.wire.metadata import REFUSAL_KEY
from flwrmtls.wire.refusals import REFUSALS, Refusal, refusal_of

__all__ = [
    "FETCH_ATTEMPTS",
    "FETCH_RETRY_DELAY",
    "NODE_ERRORS",
    "BadAnswer",
    "FleetClient",
    "ObjectMissing",
    "OverQuota",
    "Pulled",
    "RenewalRefused",
    "RequestRefused",
    "RunUnavailable",
    "Session",
    "SessionEnded",
    "fetch_again",
    "node_error",
]

_CALL_TIMEOUT = 10.0
_TRANSFER_TIMEOUT = 600.0
FETCH_ATTEMPTS = 3
"""Tries of one download the link's side broke off (see the module's rules)."""
FETCH_RETRY_DELAY = 0.5
"""Seconds before the second try; doubled before each next one."""
_MIN_TRY = 5.0
"""Seconds of the transfer's time a try needs left to be started at all."""
_CANCEL_CHECK = 0.25
_WRONG_AUDIENCE = "wrong-audience"
_T = TypeVar("_T")
_M = TypeVar("_M", bound=ProtoMessage)

log = logging.getLogger("flwrmtls.node")


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
        self.arrived = 0
        """Chunks received so far."""

    def __iter__(self) -> Iterator[ObjectChunk]:
        return self

    def __next__(self) -> ObjectChunk:
        chunk: ObjectChunk = next(self._stream)
        self.arrived += 1
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


class RunUnavailable(Refused):
    """The run will give this node no work: it is not active (``run-ended``), or it never
    sent this node any (``run-not-for-node``)."""

    def __init__(self, message: str, *, ended: bool) -> None:
        super().__init__(message)
        self.ended = ended


class ObjectMissing(Refused):
    """The link has no such object for this node (not stored, or not one it may read)."""


class RenewalRefused(Refused):
    """The link did not renew this node's certificate (too soon, not one it enrolled, a CSR
    it does not sign): the node keeps its current one and says so."""


class RequestRefused(Refused):
    """The link refused what this node sent (a reply not its to send, an id used before): a
    bug in the node or its ClientApp, which retrying will not mend."""


NODE_ERRORS: Mapping[Refusal, Callable[[str], FlwrmtlsError]] = {
    Refusal.UNKNOWN_SESSION: lambda text: SessionEnded(text, superseded=False),
    Refusal.SESSION_SUPERSEDED: lambda text: SessionEnded(text, superseded=True),
    Refusal.RUN_ENDED: lambda text: RunUnavailable(text, ended=True),
    Refusal.RUN_NOT_FOR_NODE: lambda text: RunUnavailable(text, ended=False),
    Refusal.NO_OBJECT: ObjectMissing,
    Refusal.OVER_QUOTA: OverQuota,
    Refusal.INVALID_MESSAGE: RequestRefused,
    Refusal.FOREIGN_MESSAGE: RequestRefused,
    Refusal.OBJECTS_NOT_PUSHED: RequestRefused,
    Refusal.INVALID_REQUEST: RequestRefused,
    Refusal.OCSP_UNAVAILABLE: LinkUnreachable,  # the link's own state: retried with backoff
    Refusal.RENEWAL_REFUSED: RenewalRefused,
    Refusal.NOT_ENROLLING: RenewalRefused,
}
"""What each refusal code the Fleet API states becomes on this node (every one: the catalogue's
rows say which those are)."""


def node_error(
    status: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, Any]]
) -> FlwrmtlsError | None:
    """This node's exception for a refusal the link stated (its code, with the status its row
    names); None when the call carries no such code."""
    refusal = refusal_of(status, trailers)
    make = NODE_ERRORS.get(refusal) if refusal is not None else None
    if refusal is None or make is None:
        return None
    return make(details or REFUSALS[refusal].meaning)


@dataclass(frozen=True, slots=True)
class Pulled:
    messages: list[common_pb2.Message]
    ended_run_ids: list[int]


@dataclass(frozen=True, slots=True)
class Session:
    node_id: int
    session_id: str
    identity: str
    heartbeat_interval: float


def fetch_again(code: grpc.StatusCode, refused: bool, details: str, chunks_arrived: int) -> bool:
    """Whether a download that failed so is fetched again (the module's rules): ``CANCELLED``;
    ``UNAVAILABLE`` after a chunk, or before any unless no connection was made; never a
    refusal the link stated."""
    if refused:
        return False
    if code is grpc.StatusCode.CANCELLED:
        return True
    return code is grpc.StatusCode.UNAVAILABLE and (
        chunks_arrived > 0 or not never_connected(details)
    )


def _trailers(error: grpc.RpcError) -> Sequence[tuple[str, Any]]:
    return getattr(error, "trailing_metadata", lambda: ())() or ()


def _stated(error: grpc.RpcError) -> FlwrmtlsError | None:
    """:func:`node_error` of a failed call: the node's table for :mod:`flwrmtls.wire.errors`."""
    return node_error(error.code(), error.details() or "", _trailers(error))


def _refusal_reason(error: grpc.RpcError) -> str:
    """The ``flwrmtls-refusal`` trailer of a refused call ("" if none)."""
    return next((str(value) for key, value in _trailers(error) if key == REFUSAL_KEY), "")


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

    def _call(self, invoke: Callable[[], _T]) -> _T:
        """One call, its failure translated (:func:`~flwrmtls.wire.errors.call`, with the
        node's table); signed for a stale server key, retried once."""
        try:
            return invoke()
        except grpc.RpcError as error:
            if self._relearn_audience is None or _refusal_reason(error) != _WRONG_AUDIENCE:
                raise rpc_failure(error, self._ctx, _stated) from None
        self._relearn_audience()
        return call(invoke, self._ctx, _stated)

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

    def renew_certificate(self, csr_der: bytes) -> bytes:
        """A new certificate chain (PEM) for this node's identity on the CSR's key."""
        response = self._call(
            lambda: self._stub.RenewCertificate(
                fleet_pb2.RenewCertificateRequest(csr_der=csr_der), timeout=_CALL_TIMEOUT
            )
        )
        return bytes(response.certificate_chain_pem)

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
        acked: Sequence[str] = (),
        cancel: Sequence[threading.Event] = (),
    ) -> Pulled | None:
        """Messages for this node (the link waits up to ``wait`` s for one), and which of
        ``active_run_ids`` ended; ``acked``: the ids of messages handed to their ClientApps.
        None, at once, when any ``cancel`` event is set before the answer (what the link
        handed out then is handed out again: it was not acknowledged)."""
        return self._call(lambda: self._pull(session, wait, active_run_ids, acked, cancel))

    def _pull(
        self,
        session: Session,
        wait: float,
        active_run_ids: Sequence[int],
        acked: Sequence[str],
        cancel: Sequence[threading.Event],
    ) -> Pulled | None:
        future = self._stub.PullMessages.future(
            fleet_pb2.PullMessagesRequest(
                session_id=session.session_id, wait_seconds=wait,
                active_run_ids=list(active_run_ids), acked_message_ids=list(acked),
            ),
            timeout=wait + _CALL_TIMEOUT,
        )  # fmt: skip
        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())
        # The answer wakes this at once; cancel requests are checked every _CANCEL_CHECK.
        while not finished.wait(_CANCEL_CHECK):
            if any(event.is_set() for event in cancel) and future.cancel():  # type: ignore[no-untyped-call]
                return None
        response = _checked(future.result())
        return Pulled(list(response.messages), list(response.ended_run_ids))

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
        verify: bool = True,
    ) -> None:
        """Copy an object from the link into ``store`` (verified; with ``verify=False`` its
        size only, when whoever reads it on this host hashes it), unless it is there; its
        chunks checked as they arrive and its announced size reserved with ``reserve``
        before a byte is written (QuotaExceeded, ValueError)."""

        streams: list[_CheckedStream] = []

        def checked_chunks(request: PullObjectRequest, **kwargs: Any) -> _CheckedStream:
            streams.append(_CheckedStream(self._stub.PullObject(request, **kwargs)))
            return streams[-1]

        def pull(timeout: float) -> None:
            streams.clear()
            pull_object_into(
                store,
                checked_chunks,
                object_id,
                session_id=session.session_id,
                timeout=timeout,
                reserve=reserve,
                verify=verify,
            )

        def arrived() -> int:
            return streams[-1].arrived if streams else 0

        self._call(lambda: self._again_if_broken_off(pull, arrived, object_id))

    def _again_if_broken_off(
        self, pull: Callable[[float], None], arrived: Callable[[], int], object_id: str
    ) -> None:
        """``pull`` tried again while :func:`fetch_again` says so, the tries within one
        transfer's time; the last failure is raised. A failed try leaves nothing stored or
        reserved (:func:`~flwrmtls.objects.transfer.pull_object_into`)."""
        deadline = time.monotonic() + _TRANSFER_TIMEOUT
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                pull(deadline - time.monotonic())
                return
            except grpc.RpcError as error:
                delay = FETCH_RETRY_DELAY * 2 ** (attempt - 1)
                again = fetch_again(
                    error.code(), bool(_refusal_reason(error)), error.details() or "", arrived()
                )
                if (
                    not again
                    or attempt == FETCH_ATTEMPTS
                    or deadline - time.monotonic() < delay + _MIN_TRY
                ):
                    raise
                log.warning(
                    "fetching object %s from the link at %s: the transfer was broken off "
                    "after %d chunk(s) (%s: %s); fetching it again in %.1f s (try %d of %d)",
                    object_id[:16], self._ctx.address, arrived(), error.code().name,
                    error.details(), delay, attempt + 1, FETCH_ATTEMPTS,
                )  # fmt: skip
                time.sleep(delay)

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

    def push_logs(self, session: Session, run_id: int, lines: Sequence[str]) -> None:
        """Lines for run ``run_id``'s log on the link (one line each)."""
        self._call(
            lambda: self._stub.PushLogs(
                fleet_pb2.PushLogsRequest(
                    session_id=session.session_id, run_id=run_id, lines=list(lines)
                ),
                timeout=_CALL_TIMEOUT,
            )
        )

    def deactivate(self, session: Session) -> None:
        self._call(
            lambda: self._stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=session.session_id),
                timeout=_CALL_TIMEOUT,
            )
        )
