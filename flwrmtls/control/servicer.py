"""The Control API on the link: what the CLI calls (nodes, runs, the audit trail).

Who may call which method is the policy table's business (:mod:`flwrmtls.auth.policy`); who
may see which run is decided here, by the run's owner (the identity that started it):

========================  ===================================  ==================================
caller                    ListRuns                             StreamLogs, StopRun
========================  ===================================  ==================================
operator                  every run                            every run
user, own run             listed                               allowed
user, another user's run  not listed; by run id: NOT_FOUND,    PERMISSION_DENIED "run N belongs
                          as for a missing run                 to another user"
========================  ===================================  ==================================

Registering EC keys (``RegisterNodeKeys``) is one transaction: every key of the request is
registered, or none. On a link with a ``certificate+key`` listener it binds each key to the
certificate node the request names (:class:`KeyBinding` says when a binding is required,
optional or refused). Unregistering a node, or binding a key anew, re-judges
every open call at once (``access_changed``): a node in a long poll is refused now, not at its
next call.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.audit import unchanged
from flwrmtls.auth.authenticator import Principal
from flwrmtls.auth.caller import current_principal
from flwrmtls.auth.crlcoverage import CoverageRow
from flwrmtls.auth.identity import IdentitySource, PrincipalKind, node_id_for_identity
from flwrmtls.auth.keyformats import key_fingerprint, node_id_for_key, parse_node_public_key
from flwrmtls.clock import Clock
from flwrmtls.control.enrolltokens import (
    denial_reason,
    request_message,
    requested_binding,
    token_message,
    ttl_of,
)
from flwrmtls.enroll.config import EnrollmentConfig
from flwrmtls.enroll.csrcheck import CsrRefused
from flwrmtls.enroll.requests import issue
from flwrmtls.enroll.tokens import TokenState, new_token, state_of
from flwrmtls.errors import InputError
from flwrmtls.expiry import ExpiryWarning
from flwrmtls.keyvalues import values_from_proto
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.proto import control_pb2, control_pb2_grpc
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.serverapps import ServerApps
from flwrmtls.state.audittable import DEFAULT_MAX_ENTRIES
from flwrmtls.state.enrolltable import RequestRecord, RequestState
from flwrmtls.state.linkstate import LinkState, NodeRecord
from flwrmtls.state.runtable import RunRecord
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["ControlServicer", "KeyBinding"]

_Context = grpc.aio.ServicerContext[Any, Any]
_FOLLOW_WAIT = 30.0
DEFAULT_AUDIT_LIMIT = 100
"""Entries ``ListAudit`` returns when the request names no limit."""


class KeyBinding(enum.StrEnum):
    """Whether a registered EC key must name the certificate node it belongs to."""

    REQUIRED = "required"
    """Every EC-key listener is certificate+key: a key without a node could never be used."""
    OPTIONAL = "optional"
    """certificate+key and a key-only listener: bound keys for the first, others for the second."""
    REFUSED = "refused"
    """No certificate+key listener: a binding could never be used."""


_NODE_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_NODE_ID = (1 << 63) - 1


def bound_node_of(text: str, source: IdentitySource) -> int:
    """The node id a registration's ``identity`` names: a decimal node id, or a certificate
    identity as the link shows it. ValueError says what is wrong."""
    if _NODE_ID.fullmatch(text) and int(text) <= _MAX_NODE_ID:
        return int(text)
    return node_id_for_identity(text, source)


def _may_see(principal: Principal, run: RunRecord) -> bool:
    """Operators see (and stop) every run; users only their own. (Without client
    authentication every caller is anonymous and the policy lets it see all.)"""
    return principal.kind is not PrincipalKind.USER or run.owner == principal.identity


def run_to_proto(run: RunRecord) -> control_pb2.Run:
    return control_pb2.Run(
        run_id=run.run_id, app_name=run.app_name, app_version=run.app_version,
        bundle_hash=run.bundle_hash, status=run.status.value, reason=run.reason,
        owner=run.owner, created_at=run.created_at, started_at=run.started_at,
        finished_at=run.finished_at, run_config_json=run.run_config_json,
        result_json=run.result_json,
    )  # fmt: skip


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        state: LinkState,
        clock: Clock,
        *,
        runs: ServerApps,
        notifier: Notifier,
        expiry_warning_days: float = 14.0,
        revocation_coverage: Callable[[datetime], Sequence[CoverageRow]] | None = None,
        key_binding: KeyBinding = KeyBinding.REFUSED,
        identity_source: IdentitySource = IdentitySource.SUBJECT,
        access_changed: Callable[[], object] = lambda: None,
        enrollment: EnrollmentConfig | None = None,
    ) -> None:
        """``revocation_coverage``: how the link checks revocation, per issuer (ListNodes).
        ``access_changed``: called after a change that may end open calls (unregister, a key
        bound anew), so the link judges them again at once."""
        self._revocation_coverage = revocation_coverage
        self._key_binding = key_binding
        self._identity_source = identity_source
        self._access_changed = access_changed
        self._enrollment = enrollment
        self._state = state
        self._clock = clock
        self._runs = runs
        self._notifier = notifier
        self._expiry_warning = ExpiryWarning(expiry_warning_days)

    async def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: _Context
    ) -> control_pb2.ListNodesResponse:
        moment = self._clock.now()
        now = moment.timestamp()
        records = self._state.list_nodes(now=now, verbose=request.verbose)
        coverage = self._revocation_coverage(moment) if self._revocation_coverage else ()
        return control_pb2.ListNodesResponse(
            revocation=[_coverage_message(row) for row in coverage],
            nodes=[
                control_pb2.NodeInfo(
                    node_id=r.node_id,
                    identity=r.identity,
                    organisation=r.organisation,
                    auth_method=r.auth_method,
                    status=r.status,
                    cert_not_after=r.cert_not_after,
                    last_seen=r.last_seen,
                    created_at=r.created_at,
                    peer_address=r.peer_address,
                    cert_fingerprint=r.cert_fingerprint,
                    cert_expires_soon=self._expires_soon(r.cert_not_after, moment),
                    status_detail=r.status_detail,
                )
                for r in records
            ],
        )

    def _expires_soon(self, not_after: float, now: datetime) -> bool:
        """Whether a recorded notAfter (0: none, an EC-key node) is within the warning."""
        if not not_after:
            return False
        return self._expiry_warning.soon(datetime.fromtimestamp(not_after, UTC), now)

    async def RegisterNodeKeys(
        self, request: control_pb2.RegisterNodeKeysRequest, context: _Context
    ) -> control_pb2.RegisterNodeKeysResponse:
        by = current_principal().identity
        now = self._clock.now().timestamp()
        bound_node = self._bound_node(request.identity)
        parsed = []
        for index, der in enumerate(request.public_keys):
            try:
                parsed.append((der, parse_node_public_key(der)))
            except ValueError as error:
                raise CallRefused(Refusal.INVALID_REQUEST, f"key {index + 1}: {error}") from None
        registered = []
        with self._state.transaction():  # every key of the request, or none
            for der, key in parsed:
                node_id = node_id_for_key(key)
                outcome = self._state.register_key(
                    der, node_id=node_id, fingerprint=key_fingerprint(key), by=by, now=now,
                    bound_node_id=bound_node, bound_identity=request.identity,
                )  # fmt: skip
                registered.append(
                    control_pb2.RegisteredKey(
                        node_id=node_id,
                        fingerprint=key_fingerprint(key),
                        outcome=outcome,
                        bound_node_id=bound_node or 0,
                    )
                )
        if all(key.outcome == "already registered" for key in registered):
            unchanged()
        if any(key.outcome == "rebound" for key in registered):
            self._access_changed()
        return control_pb2.RegisterNodeKeysResponse(keys=registered)

    def _bound_node(self, identity: str) -> int | None:
        """The certificate node a registration binds its keys to, as the link's mode asks."""
        if not identity:
            if self._key_binding is KeyBinding.REQUIRED:
                raise CallRefused(
                    Refusal.INVALID_REQUEST,
                    "this link runs --node-auth certificate+key: name the certificate node the "
                    "key belongs to (flwrmtls supernode register KEY.pub --identity "
                    "'CN=node-1,O=Hospital A', or its node id)",
                )
            return None
        if self._key_binding is KeyBinding.REFUSED:
            raise CallRefused(
                Refusal.INVALID_REQUEST,
                "--identity binds a key to a certificate node, but no listener of this link "
                "runs --node-auth certificate+key: register the key without --identity",
            )
        try:
            return bound_node_of(identity, self._identity_source)
        except ValueError as error:
            raise CallRefused(Refusal.INVALID_REQUEST, f"--identity: {error}") from None

    async def UnregisterNode(
        self, request: control_pb2.UnregisterNodeRequest, context: _Context
    ) -> control_pb2.UnregisterNodeResponse:
        node_id = request.node_id
        now = self._clock.now().timestamp()
        record = self._existing_node(node_id, now)
        if record.status == "unregistered":
            raise CallRefused(Refusal.NODE_STATE, f"node {node_id} is already unregistered")
        self._state.unregister_node(node_id, by=current_principal().identity, now=now)
        self._access_changed()
        self._notifier.notify(("node", node_id))
        for run in self._state.runs.active():
            self._notifier.notify(("run", run.run_id))
        return control_pb2.UnregisterNodeResponse(
            identity=record.identity, auth_method=record.auth_method
        )

    def _existing_node(self, node_id: int, now: float) -> NodeRecord:
        record = next(
            (r for r in self._state.list_nodes(now=now, verbose=True) if r.node_id == node_id),
            None,
        )
        if record is None:
            raise CallRefused(Refusal.NO_NODE, f"no node {node_id}")
        return record

    async def ReadmitNode(
        self, request: control_pb2.ReadmitNodeRequest, context: _Context
    ) -> control_pb2.ReadmitNodeResponse:
        node_id = request.node_id
        now = self._clock.now().timestamp()
        record = self._existing_node(node_id, now)
        if record.status != "unregistered":
            raise CallRefused(Refusal.NODE_STATE, f"node {node_id} is not unregistered")
        if record.auth_method == "key":
            raise CallRefused(
                Refusal.NODE_STATE,
                f"node {node_id} authenticates by EC key: register its key again "
                "(flwrmtls supernode register KEY.pub)",
            )
        self._state.readmit_node(node_id)
        return control_pb2.ReadmitNodeResponse(identity=record.identity)

    async def StartRun(
        self, request: control_pb2.StartRunRequest, context: _Context
    ) -> control_pb2.StartRunResponse:
        owner = current_principal().identity
        try:
            run_id = await self._runs.start_run(
                request.bundle, request.bundle_hash, values_from_proto(request.run_config), owner
            )
        except (InputError, ValueError) as error:
            raise CallRefused(Refusal.INVALID_REQUEST, str(error)) from None
        except QuotaExceeded as error:
            raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None
        return control_pb2.StartRunResponse(run_id=run_id)

    async def ListRuns(
        self, request: control_pb2.ListRunsRequest, context: _Context
    ) -> control_pb2.ListRunsResponse:
        principal = current_principal()
        if request.run_id:
            run = self._existing_run(request.run_id)
            if not _may_see(principal, run):
                raise CallRefused(Refusal.NO_RUN, f"no run {request.run_id}")
            return control_pb2.ListRunsResponse(runs=[run_to_proto(run)])
        return control_pb2.ListRunsResponse(
            runs=[run_to_proto(r) for r in self._state.runs.all() if _may_see(principal, r)]
        )

    def _existing_run(self, run_id: int) -> RunRecord:
        run = self._state.runs.get(run_id)
        if run is None:
            raise CallRefused(Refusal.NO_RUN, f"no run {run_id}")
        return run

    def _own_run(self, run_id: int) -> RunRecord:
        """The run, if the caller may see it: a missing run is ``no-run`` (NOT_FOUND), another
        user's run ``not-owner`` (PERMISSION_DENIED)."""
        run = self._existing_run(run_id)
        if not _may_see(current_principal(), run):
            raise CallRefused(Refusal.NOT_OWNER, f"run {run_id} belongs to another user")
        return run

    async def StreamLogs(
        self, request: control_pb2.StreamLogsRequest, context: _Context
    ) -> AsyncIterator[control_pb2.LogEntry]:
        run = self._own_run(request.run_id)
        seq = request.after_seq
        while True:
            entries = self._state.runs.logs_after(run.run_id, seq)
            for entry in entries:
                seq = entry.seq
                yield control_pb2.LogEntry(
                    seq=entry.seq, timestamp=entry.timestamp, source=entry.source, text=entry.text
                )
            if entries:
                continue
            run = self._existing_run(run.run_id)
            if run.ended or not request.follow:
                if not self._state.runs.logs_after(run.run_id, seq):
                    yield control_pb2.LogEntry(
                        seq=seq, source="link", run_status=run.status.value,
                        timestamp=run.finished_at or self._clock.now().timestamp(),
                    )  # fmt: skip
                    return
                continue
            await self._notifier.wait(("logs", run.run_id), _FOLLOW_WAIT)

    async def StopRun(
        self, request: control_pb2.StopRunRequest, context: _Context
    ) -> control_pb2.StopRunResponse:
        run = self._own_run(request.run_id)
        if run.ended:
            unchanged()  # audited with the calls that changed nothing
        who = current_principal().identity
        status = await self._runs.stop_run(request.run_id, f"stopped by {who}")
        return control_pb2.StopRunResponse(status=status.value)

    async def ListAudit(
        self, request: control_pb2.ListAuditRequest, context: _Context
    ) -> control_pb2.ListAuditResponse:
        limit = min(request.limit or DEFAULT_AUDIT_LIMIT, DEFAULT_MAX_ENTRIES)
        entries = self._state.audit.entries(limit, request.identity)
        return control_pb2.ListAuditResponse(
            entries=[
                control_pb2.AuditEntry(
                    seq=e.seq,
                    timestamp=e.record.timestamp,
                    identity=e.record.identity,
                    auth_method=e.record.auth_method,
                    method=e.record.method,
                    outcome=e.record.outcome,
                    detail=e.record.detail,
                    peer=e.record.peer,
                )
                for e in entries
            ]
        )

    # --- join tokens (docs/enrollment.md) ----------------------------------------------------

    async def CreateEnrollToken(
        self, request: control_pb2.CreateEnrollTokenRequest, context: _Context
    ) -> control_pb2.CreateEnrollTokenResponse:
        binding = requested_binding(request.identity)
        now = self._clock.now()
        by = current_principal().identity
        for _ in range(3):  # the id is 32 random bits: a collision is rare, and retried
            issued = new_token(binding, now, ttl_of(request.ttl_seconds), created_by=by)
            if self._state.enroll.add(issued.record):
                return control_pb2.CreateEnrollTokenResponse(
                    token=issued.text, info=token_message(issued.record, now)
                )
        raise AssertionError("three token ids in a row were taken")

    async def ListEnrollTokens(
        self, request: control_pb2.ListEnrollTokensRequest, context: _Context
    ) -> control_pb2.ListEnrollTokensResponse:
        now = self._clock.now()
        tokens = [token_message(record, now) for record in self._state.enroll.all()]
        if not request.all:
            tokens = [token for token in tokens if token.state == TokenState.ACTIVE.value]
        return control_pb2.ListEnrollTokensResponse(tokens=tokens)

    async def RevokeEnrollToken(
        self, request: control_pb2.RevokeEnrollTokenRequest, context: _Context
    ) -> control_pb2.RevokeEnrollTokenResponse:
        now = self._clock.now()
        record = self._state.enroll.get(request.token_id)
        if record is None:
            raise CallRefused(Refusal.NO_ENROLL_TOKEN, f"no join token {request.token_id!r}")
        if not self._state.enroll.revoke(record.token_id, now):
            state = state_of(record, now)
            raise CallRefused(
                Refusal.ENROLL_TOKEN_STATE,
                f"join token {record.token_id} is {state.value} already: only a token still "
                "usable can be revoked (a certificate it brought is revoked with your CA)",
            )
        revoked = self._state.enroll.get(record.token_id)
        assert revoked is not None
        return control_pb2.RevokeEnrollTokenResponse(token=token_message(revoked, now))

    # --- certificate requests (docs/enrollment.md) -------------------------------------------

    async def ListEnrollRequests(
        self, request: control_pb2.ListEnrollRequestsRequest, context: _Context
    ) -> control_pb2.ListEnrollRequestsResponse:
        records = self._state.enroll.requests()
        if not request.all:
            records = [r for r in records if r.state is RequestState.PENDING]
        return control_pb2.ListEnrollRequestsResponse(
            requests=[request_message(r, self._state.enroll.get(r.token_id)) for r in records]
        )

    async def DecideEnrollRequest(
        self, request: control_pb2.DecideEnrollRequestRequest, context: _Context
    ) -> control_pb2.DecideEnrollRequestResponse:
        enrollment = self._enrollment
        if enrollment is None:
            raise CallRefused(Refusal.NOT_ENROLLING)
        request_id = request.request_id
        record = self._state.enroll.request(request_id)
        if record is None:
            raise CallRefused(Refusal.NO_ENROLL_REQUEST, f"no certificate request {request_id}")
        reason = denial_reason(request.reason)
        decided = record.state is RequestState.PENDING and self._decide(
            record, enrollment, approve=request.approve, reason=reason
        )
        current = self._state.enroll.request(request_id)
        assert current is not None
        if not decided:
            raise CallRefused(
                Refusal.ENROLL_REQUEST_STATE,
                f"certificate request {request_id} is {current.state.value} already (by "
                f"{current.decided_by})",
            )
        token = self._state.enroll.get(record.token_id)
        return control_pb2.DecideEnrollRequestResponse(request=request_message(current, token))

    def _decide(
        self, record: RequestRecord, enrollment: EnrollmentConfig, *, approve: bool, reason: str
    ) -> bool:
        """Issue or deny a pending request; False when another decision came first."""
        by, now = current_principal().identity, self._clock.now()
        enroll = self._state.enroll
        if not approve:
            return enroll.decide(record.request_id, RequestState.DENIED, now, by=by, reason=reason)
        try:
            issued = issue(
                enroll, enrollment.issuer, record, now, by=by,
                max_days=enrollment.certificate_days,
            )  # fmt: skip
        except CsrRefused as error:  # the link would not sign it now: it is denied instead
            why = f"the link no longer signs it: {error}"
            enroll.decide(record.request_id, RequestState.DENIED, now, by=by, reason=why)
            raise CallRefused(
                Refusal.INVALID_REQUEST, f"certificate request {record.request_id} denied: {why}"
            ) from None
        return issued is not None


def _coverage_message(row: CoverageRow) -> control_pb2.RevocationCoverage:
    return control_pb2.RevocationCoverage(
        issuer=row.issuer,
        scope=row.scope,
        kind=row.kind,
        sources=row.sources,
        crl_number=row.crl_number or 0,
        delta_crl_number=row.delta_crl_number or 0,
        this_update=row.this_update.timestamp() if row.this_update else 0.0,
        next_update=row.next_update.timestamp() if row.next_update else 0.0,
        state=row.state.value,
        detail=row.detail,
        expires_soon=bool(row.expiry_warning),
        expiry_warning=row.expiry_warning,
    )
