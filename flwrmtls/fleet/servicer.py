"""The Fleet API on the link: convert, delegate to the state, translate errors.

The caller's node id comes from its authenticated principal (its certificate), never from the
request; only a link without client authentication falls back to the session's node id.
Rules for runs:

* Work reaches a node without a polling delay: PullMessages waits (long poll) until a message
  for the node is stored or one of the node's runs ends. A long poll cancelled by a closed
  connection tells :mod:`flwrmtls.runs.presence`, which marks the node offline within a
  second unless it calls again; a node so marked that calls again is online again at once.
* Delivery is at least once: PullMessages leases what it hands out for ``DELIVERY_LEASE``
  seconds, and a message counts as delivered only once the node acknowledges it (the
  ``acked_message_ids`` of a later pull, applied before anything is handed out). What is not
  acknowledged is handed out again after its lease, or at once when the node activates again;
  a message with a reply (the node's, or the link's NODE_UNAVAILABLE) never is. A node
  acknowledges only its own messages (see :mod:`flwrmtls.state.messagetable`), and a
  second reply to a message is dropped: a duplicate costs work, never a second answer.
* A refusal carries its code (:mod:`flwrmtls.wire.refusals`, the error catalogue): an unknown
  or superseded session, a run that is not active or has no work for the node, a missing
  object, a storage bound, a message the link does not route. The status code alone never
  says which. Handlers raise it; the catalogue's interceptor answers it.
* A node may reply only to a message addressed to it, in a run that has not ended; the link
  stamps the reply with the node's certificate identity, so the ServerApp knows who answered
  (the rules are :mod:`flwrmtls.runs.routing`'s). A push of replies is one transaction: the
  replies, their objects' rows and the run log lines of ClientApps that raised are stored
  whole or not at all.
* A node may ask for a run's bundle hash and config only for a run that sent it work, and
  write lines to its log (PushLogs: what installing the run's app dependencies does there)
  only for such a run while it is active: at most ``MAX_LOG_LINES_PER_CALL`` lines a call,
  ``MAX_NODE_LOG_LINES`` per run and node (then OVER_QUOTA), each one line (a line break
  would let it forge the lines of others: refused) cut at ``MAX_LOG_LINE_CHARS``. They are
  logged under ``node <its certificate identity>``, never a name the node gives.
* Objects: a node reads only the objects named by messages addressed to it (and their runs'
  bundles, and its own uploads), and a reply may name only those; an upload counts against
  the node's pending budget until a reply names it, then against the reply's run. What is
  outside a node's scope is answered as missing (see :mod:`flwrmtls.runs.linkobjects`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from flwrmtls.auth.audit import note
from flwrmtls.auth.caller import current_principal
from flwrmtls.clock import Clock
from flwrmtls.enroll.renewal import RenewalRefused, Renewals
from flwrmtls.expiry import ExpiryWarning
from flwrmtls.keyvalues import values_to_proto
from flwrmtls.objects.scope import ObjectScope, QuotaExceeded
from flwrmtls.objects.serving import answer_missing, answer_pull, answer_push
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.runs.linkobjects import LinkObjects, UnknownObjects
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.presence import Presence
from flwrmtls.runs.routing import route_replies
from flwrmtls.runs.runlog import RunLog
from flwrmtls.state.linkstate import LinkState, SessionSuperseded, UnknownSession
from flwrmtls.wire.bounds import long_poll_seconds
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = [
    "DELIVERY_LEASE",
    "MAX_ACKS",
    "MAX_LOG_LINES_PER_CALL",
    "MAX_LOG_LINE_CHARS",
    "MAX_NODE_LOG_LINES",
    "FleetServicer",
]

log = logging.getLogger("flwrmtls.link")

_Context = grpc.aio.ServicerContext[Any, Any]
_DEFAULT_PULL_LIMIT = 100
_MAX_ACTIVE_RUNS = 1000
MAX_ACKS = 1000
"""The most message ids one pull may acknowledge."""
MAX_LOG_LINES_PER_CALL = 20
MAX_NODE_LOG_LINES = 200
"""The most log lines one node may write into one run's log."""
MAX_LOG_LINE_CHARS = 1000
DELIVERY_LEASE = 60.0
"""Seconds a handed-out message waits for its acknowledgement before it is handed out again:
more than a node's long poll (:data:`~flwrmtls.wire.bounds.LONG_POLL_SECONDS`) and the pull
that carries the acknowledgement."""


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(
        self,
        state: LinkState,
        clock: Clock,
        heartbeat_interval: float,
        *,
        notifier: Notifier,
        objects: LinkObjects,
        run_log: RunLog,
        presence: Presence | None = None,
        expiry_warning_days: float = 14.0,
        on_round_trip: Callable[[float], None] | None = None,
        renewals: Renewals | None = None,
    ) -> None:
        """``on_round_trip``: told, for each reply stored, the seconds since the message it
        answers was stored (metrics; None when they are off). ``renewals``: how enrolled
        nodes renew their certificates (None: the link does not enroll, and
        ``RenewCertificate`` is refused)."""
        self._on_round_trip = on_round_trip
        self._renewals = renewals
        self._expiry_warning = ExpiryWarning(expiry_warning_days)
        self._presence = presence or Presence(
            clock, mark_offline=lambda *_: False, on_offline=lambda _: None
        )
        self._state = state
        self._clock = clock
        self._interval = heartbeat_interval
        self._notifier = notifier
        self._objects = objects
        self._run_log = run_log
        self._log_lines: dict[tuple[int, int], int] = {}
        """(run id, node id) -> the log lines that node wrote into that run's log."""

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _session_node(self, session_id: str) -> int:
        """The caller's node id, checked against its newest session."""
        principal = current_principal()
        try:
            if principal.node_id is None:
                node_id = self._state.node_of_session(session_id)
            else:
                self._state.check_session(principal.node_id, session_id)
                node_id = principal.node_id
        except SessionSuperseded as error:
            raise CallRefused(
                Refusal.SESSION_SUPERSEDED,
                f"session superseded: a newer connection from {error.peer_address} activated "
                f"the same identity ({principal.identity})",
            ) from None
        except UnknownSession:
            raise CallRefused(Refusal.UNKNOWN_SESSION) from None
        if self._presence.call(node_id):  # marked offline when its connection closed: back
            self._resume(node_id, session_id)
        return node_id

    def _resume(self, node_id: int, session_id: str) -> None:
        self._state.heartbeat(
            node_id, session_id, now=self._now(), heartbeat_interval=self._interval,
            peer_address=None,
        )  # fmt: skip
        self._notifier.notify(("nodes",))

    async def RenewCertificate(
        self, request: fleet_pb2.RenewCertificateRequest, context: _Context
    ) -> fleet_pb2.RenewCertificateResponse:
        """A new certificate for the caller's own identity (:mod:`flwrmtls.enroll.renewal`):
        the interceptor admitted its current certificate, read here from the connection."""
        if self._renewals is None:
            raise CallRefused(Refusal.NOT_ENROLLING)
        principal = current_principal()
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
        try:
            current = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise CallRefused(Refusal.RENEWAL_REFUSED, "a node renews over mTLS only") from None
        if current.fingerprint(hashes.SHA256()).hex() != principal.fingerprint:
            raise CallRefused(Refusal.RENEWAL_REFUSED, "not the certificate this call presented")
        try:
            issued = self._renewals.renew(
                current, request.csr_der, self._clock.now(), days=request.days,
                peer=str(context.peer()),
            )  # fmt: skip
        except RenewalRefused as error:
            raise CallRefused(Refusal.RENEWAL_REFUSED, str(error)) from None
        if issued.repeat_of is not None:
            line = (
                f"repeat: {principal.identity} asked again with certificate serial "
                f"{current.serial_number:x} and the key it renewed for at "
                f"{issued.repeat_of:%Y-%m-%d %H:%M:%S} UTC; answered serial "
                f"{issued.certificate.serial_number:x} again, nothing signed"
            )
            note(line)
            log.info("%s", line)
        return fleet_pb2.RenewCertificateResponse(certificate_chain_pem=issued.chain_pem)

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
        self._notifier.notify(("nodes",))
        self._warn_if_expiring(principal.identity, principal.not_after)
        return fleet_pb2.ActivateNodeResponse(
            node_id=node_id,
            session_id=session_id,
            identity=principal.identity,
            heartbeat_interval=self._interval,
        )

    def _warn_if_expiring(self, identity: str, not_after: datetime | None) -> None:
        if not_after is None:
            return
        line = self._expiry_warning.line(
            f"node {identity}: its certificate", not_after, self._clock.now()
        )
        if line is not None:
            log.warning("%s", line)

    async def DeactivateNode(
        self, request: fleet_pb2.DeactivateNodeRequest, context: _Context
    ) -> fleet_pb2.DeactivateNodeResponse:
        node_id = self._session_node(request.session_id)
        self._state.deactivate_node(node_id, request.session_id, now=self._now())
        return fleet_pb2.DeactivateNodeResponse()

    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: _Context
    ) -> fleet_pb2.HeartbeatResponse:
        principal = current_principal()
        try:
            node_id = principal.node_id
            if node_id is None:
                node_id = self._state.node_of_session(request.session_id)
            self._state.heartbeat(
                node_id, request.session_id, now=self._now(),
                heartbeat_interval=self._interval, peer_address=context.peer(),
            )  # fmt: skip
        except (SessionSuperseded, UnknownSession):
            self._session_node(request.session_id)  # raises the reason
            raise
        if self._presence.call(node_id):
            self._notifier.notify(("nodes",))  # online again (the heartbeat did it)
        return fleet_pb2.HeartbeatResponse(heartbeat_interval=self._interval)

    async def PullMessages(
        self, request: fleet_pb2.PullMessagesRequest, context: _Context
    ) -> fleet_pb2.PullMessagesResponse:
        node_id = self._session_node(request.session_id)
        if len(request.active_run_ids) > _MAX_ACTIVE_RUNS:
            raise CallRefused(
                Refusal.INVALID_REQUEST, f"at most {_MAX_ACTIVE_RUNS} active runs per pull"
            )
        if len(request.acked_message_ids) > MAX_ACKS:
            raise CallRefused(
                Refusal.INVALID_REQUEST, f"at most {MAX_ACKS} acknowledged messages per pull"
            )
        self._state.messages.acknowledge(node_id, request.acked_message_ids, now=self._now())
        limit = min(request.max_messages or _DEFAULT_PULL_LIMIT, _DEFAULT_PULL_LIMIT)

        def look() -> tuple[list[bytes], list[int]]:
            protos = self._state.messages.deliver(
                node_id, now=self._now(), limit=limit, lease=DELIVERY_LEASE
            )
            ended = [
                run_id
                for run_id in request.active_run_ids
                if (run := self._state.runs.get(run_id)) is None or run.ended
            ]
            return protos, ended

        self._presence.poll_started(node_id)
        dropped = False
        try:
            protos, ended = await self._notifier.long_poll(
                ("node", node_id), long_poll_seconds(request.wait_seconds), look,
                clock=self._clock, ready=lambda found: bool(found[0] or found[1]),
            )  # fmt: skip
        except asyncio.CancelledError:
            dropped = True  # the connection closed (or the link ended the call)
            raise
        finally:
            self._presence.poll_ended(node_id, request.session_id, dropped=dropped)
        messages = [common_pb2.Message.FromString(p) for p in protos]
        return fleet_pb2.PullMessagesResponse(messages=messages, ended_run_ids=ended)

    async def PushMessages(
        self, request: fleet_pb2.PushMessagesRequest, context: _Context
    ) -> fleet_pb2.PushMessagesResponse:
        node_id = self._session_node(request.session_id)
        principal = current_principal()
        reply_to = [m.reply_to_message_id for m in request.messages]
        originals = self._state.messages.get(reply_to)
        now = self._now()
        routed = route_replies(
            request.messages, node_id=node_id, identity=principal.identity,
            originals=originals, answered=self._state.messages.replies_to(reply_to),
            used_ids=self._state.messages.taken(m.message_id for m in request.messages),
            active_runs=self._active_runs({original.run_id for original in originals.values()}),
            now=now,
        )  # fmt: skip
        try:
            with self._state.transaction():  # the replies and their objects' rows: one commit
                self._objects.accept_replies(node_id, routed.named_objects)
                self._state.messages.store(routed.rows)
                for run_id, reason in routed.raised:
                    self._run_log.add(
                        run_id,
                        f"node {principal.identity}",
                        f"ClientApp on node {node_id} raised:\n{reason}",
                    )
        except UnknownObjects as error:
            raise CallRefused(
                Refusal.OBJECTS_NOT_PUSHED, f"a reply names objects this node did not push: {error}"
            ) from None
        except QuotaExceeded as error:
            raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None
        for run_id in {row.run_id for row in routed.rows}:
            self._notifier.notify(("run", run_id))
        if self._on_round_trip is not None:
            for row in routed.rows:
                self._on_round_trip(now - originals[row.reply_to_message_id].created_at)
        return fleet_pb2.PushMessagesResponse(message_ids=[row.message_id for row in routed.rows])

    def _active_runs(self, run_ids: set[int]) -> set[int]:
        return {
            run_id
            for run_id in run_ids
            if (run := self._state.runs.get(run_id)) is not None and not run.ended
        }

    async def GetRun(
        self, request: fleet_pb2.GetRunRequest, context: _Context
    ) -> fleet_pb2.GetRunResponse:
        node_id = self._session_node(request.session_id)
        run = self._state.runs.get(request.run_id)
        # Not active: the same answer PullMessages gives in ended_run_ids, so nothing more.
        if run is None or run.ended:
            raise CallRefused(
                Refusal.RUN_ENDED, f"run {request.run_id} is not active: it ended, or never existed"
            )
        if not self._state.messages.sent_to(request.run_id, node_id):
            raise CallRefused(
                Refusal.RUN_NOT_FOR_NODE, f"run {request.run_id} has no work for this node"
            )
        return fleet_pb2.GetRunResponse(
            run_id=run.run_id,
            bundle_hash=run.bundle_hash,
            run_config=values_to_proto(run.run_config),
            status=run.status.value,
        )

    async def PushLogs(
        self, request: fleet_pb2.PushLogsRequest, context: _Context
    ) -> fleet_pb2.PushLogsResponse:
        node_id = self._session_node(request.session_id)
        run_id = request.run_id
        run = self._state.runs.get(run_id)
        if run is None or run.ended:
            raise CallRefused(
                Refusal.RUN_ENDED, f"run {run_id} is not active: it ended, or never existed"
            )
        if not self._state.messages.sent_to(run_id, node_id):
            raise CallRefused(Refusal.RUN_NOT_FOR_NODE, f"run {run_id} has no work for this node")
        lines = list(request.lines)
        if len(lines) > MAX_LOG_LINES_PER_CALL:
            raise CallRefused(
                Refusal.INVALID_REQUEST,
                f"{len(lines)} log lines in one call; at most {MAX_LOG_LINES_PER_CALL}",
            )
        if any("\n" in line or "\r" in line for line in lines):
            raise CallRefused(Refusal.INVALID_REQUEST, "a log line holds a line break")
        written = self._log_lines.get((run_id, node_id), 0)
        if written + len(lines) > MAX_NODE_LOG_LINES:
            raise CallRefused(
                Refusal.OVER_QUOTA,
                f"this node wrote {written} lines into run {run_id}'s log; at most "
                f"{MAX_NODE_LOG_LINES} per run",
            )
        self._forget_ended_logs()
        self._log_lines[(run_id, node_id)] = written + len(lines)
        source = f"node {current_principal().identity}"
        with self._state.transaction():
            for line in lines:
                cut = line[:MAX_LOG_LINE_CHARS] + ("..." if len(line) > MAX_LOG_LINE_CHARS else "")
                self._run_log.add(run_id, source, cut)
        return fleet_pb2.PushLogsResponse()

    def _forget_ended_logs(self) -> None:
        """Keep the line counts bounded: those of runs that ended go once there are many."""
        if len(self._log_lines) < 10_000:
            return
        for key in list(self._log_lines):
            run = self._state.runs.get(key[0])
            if run is None or run.ended:
                del self._log_lines[key]

    async def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: _Context
    ) -> AsyncIterator[objects_pb2.ObjectChunk]:
        node_id = self._session_node(request.session_id)
        scope = self._objects.node_scope(node_id)
        async for chunk in answer_pull(
            self._objects.store, scope, request.object_id, self._objects.transfers
        ):
            yield chunk

    async def PushObject(
        self, request_iterator: AsyncIterator[objects_pb2.ObjectChunk], context: _Context
    ) -> objects_pb2.PushObjectResponse:
        async def scope_of(first: objects_pb2.ObjectChunk) -> ObjectScope:
            node_id = self._session_node(first.session_id)
            return self._objects.node_scope(node_id)

        response, _ = await answer_push(
            self._objects.store, request_iterator, scope_of, self._objects.transfers
        )
        return response

    async def MissingObjects(
        self, request: objects_pb2.MissingObjectsRequest, context: _Context
    ) -> objects_pb2.MissingObjectsResponse:
        node_id = self._session_node(request.session_id)
        scope = self._objects.node_scope(node_id)
        return await answer_missing(self._objects.store, scope, request.object_ids)
