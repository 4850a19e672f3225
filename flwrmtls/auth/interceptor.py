"""Where authentication meets gRPC: the decisions (with :mod:`flwrmtls.auth.callgate`, which
applies them to each handler, the only auth code that touches gRPC).

A grpc.aio server interceptor sees a call's method name but not its TLS peer, so it returns
the method's handler wrapped: the wrapper collects the call's credentials from the auth
context, asks the authenticator for the principal, checks the policy table, and runs the
handler with the principal available through
:func:`~flwrmtls.auth.caller.current_principal`. Unlisted methods get a handler that refuses
at once.

Refusals are logged by :class:`~flwrmtls.auth.refusallog.RefusalLog` (once per certificate,
key or peer, reason and interval; at most so many per peer address). The wrapper itself is
:func:`flwrmtls.auth.callgate.wrap`.

Before authenticating, a call from a peer address over its failed-authentication budget is
refused (:mod:`flwrmtls.auth.ratelimit`); after, the calls in progress per peer address are
bounded. Both answers are UNAVAILABLE with what to do: nodes retry them.

A call whose authenticator is still finding out what it needs
(:class:`~flwrmtls.auth.authenticator.DecisionPending`: the first OCSP answer for a chain)
awaits it, bounded, and is judged once more; the event loop serves others meanwhile. A
credential refusal is UNAUTHENTICATED unless :data:`_REFUSAL_CODES` says otherwise. What the
link cannot judge for its own reasons (``ocsp-unavailable``: no usable OCSP answer, which may
pass) carries a code of the error catalogue and is answered through it
(:func:`flwrmtls.wire.refusals.refuse`: UNAVAILABLE, which nodes retry), and is not counted
against the caller's failed-authentication budget.

With an ``audit`` sink, Control calls, node admissions and refusals are also handed to the
audit trail as :class:`~flwrmtls.auth.audit.AuditRecord` values; :mod:`flwrmtls.auth.audit`
says which. Other calls pay one None check for it. With ``metrics`` (off by default), each
refusal is counted by reason and each certificate's time left observed (one None check off).

With a ``live`` registry (:mod:`flwrmtls.auth.livecalls`), every authorized call is in it
while it runs, so the link can end an open call whose credentials stop being admitted (a
revocation, an expiry, an unregister, a CA bundle that dropped its CA): the caller gets the
refusal exactly as a refused unary call does (UNAUTHENTICATED, the reason in the details and
the ``flwrmtls-refusal`` trailer); :mod:`flwrmtls.auth.callgate` says how, for each shape of
call, and how a signed upload's chunks are held to the object its signature covers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography import x509

from flwrmtls.auth.audit import (
    OUTCOME_OK,
    AuditRecord,
    AuditSink,
    Retention,
    noted,
    records_every_call,
    records_every_refusal,
    retention_of,
)
from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    AuthMethod,
    CallCredentials,
    DecisionPending,
    KeySignature,
    Principal,
    RefusalReason,
    TryLater,
)
from flwrmtls.auth.callgate import Gate, Release, Watching, wrap
from flwrmtls.auth.callsigning import key_signature_from_metadata
from flwrmtls.auth.identity import ROLE_OID
from flwrmtls.auth.livecalls import LiveCalls
from flwrmtls.auth.policy import is_permitted, refusal_hint, required_kinds, wrong_door
from flwrmtls.auth.ratelimit import FailureLimiter, peer_host
from flwrmtls.auth.refusallog import RefusalLog
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.clock import Clock
from flwrmtls.wire.metadata import REFUSAL_KEY
from flwrmtls.wire.refusals import Refusal, refuse

__all__ = ["REFUSAL_METADATA_KEY", "AuthInterceptor", "AuthMetrics"]

log = logging.getLogger("flwrmtls.link.auth")

REFUSAL_METADATA_KEY = REFUSAL_KEY
"""Trailing metadata naming the :class:`RefusalReason` of a refused call."""

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> bytes | None:
    return next(iter(auth_context.get(key, ())), None)


def _app_credentials(
    context: _Context, body_digest: bytes
) -> tuple[str | None, KeySignature | None]:
    """The run token and the EC-key signature a call carries in its metadata, if any."""
    metadata = list(context.invocation_metadata() or ())
    token = next((str(value) for key, value in metadata if key == TOKEN_METADATA_KEY), None)
    return token, key_signature_from_metadata(metadata, body_digest)


def _presented_credential(call: CallCredentials) -> bytes:
    """What the call authenticates with, as bytes (unparsed): the leaf certificate, the EC
    public key or the token; empty without any."""
    if call.key_signature is not None:
        return call.key_signature.public_key.encode()
    return call.leaf_pem or (call.token or "").encode()


def _presented_identity(
    call: CallCredentials, error: AuthenticationFailed
) -> tuple[str, AuthMethod]:
    """Who a call refused before it had a principal claims to be: (identity, auth method).

    For the audit trail only. A certificate's Subject is read as presented, trusted or not;
    the entry's outcome says why it was refused.
    """
    host = call.peer.rsplit(":", 1)[0]
    if call.leaf_pem:
        try:
            subject = x509.load_pem_x509_certificate(call.leaf_pem).subject
            return subject.rfc4514_string({ROLE_OID: "role"}) or host, AuthMethod.CERTIFICATE
        except ValueError:
            return host, AuthMethod.CERTIFICATE
    if call.key_signature is not None or error.fingerprint.startswith("SHA256:"):
        return error.fingerprint or host, AuthMethod.KEY
    if call.token is not None:
        return host, AuthMethod.TOKEN
    return host, AuthMethod.NONE


def _outcome(context: _Context, error: BaseException | None) -> tuple[str, str]:
    """``ok``, or the status code's name and details a call ended with."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name, "the caller went away"
    code = context.code()
    if code is not None and code is not grpc.StatusCode.OK:
        return str(getattr(code, "name", code)), str(context.details() or "")
    if error is not None:
        return grpc.StatusCode.UNKNOWN.name, f"the handler raised {type(error).__name__}"
    return OUTCOME_OK, noted()


_REFUSAL_CODES = {RefusalReason.NOT_PERMITTED: grpc.StatusCode.PERMISSION_DENIED}
"""The status a credential refusal is answered with, when the call starts or while it is
open: UNAUTHENTICATED unless listed. A code of the error catalogue is answered by its row."""


async def _answer(context: _Context, refusal: AuthenticationFailed) -> None:
    """End the call with ``refusal``: its code in the trailer; the catalogue's row for a code
    of the catalogue (the link's own state), else :data:`_REFUSAL_CODES`. Raises grpc's
    AbortError."""
    if isinstance(refusal.reason, Refusal):
        await refuse(context, refusal.reason, refusal.message)
    context.set_trailing_metadata(((REFUSAL_METADATA_KEY, refusal.reason.value),))
    await context.abort(
        _REFUSAL_CODES.get(refusal.reason, grpc.StatusCode.UNAUTHENTICATED), refusal.message
    )


class AuthMetrics(Protocol):
    """What the interceptor tells metrics (:mod:`flwrmtls.ops.metrics`), when they are on."""

    def refused(self, api: str, reason: str) -> None: ...

    def admitted(self, kind: str, seconds_left: float) -> None:
        """A call authenticated by a certificate with ``seconds_left`` until it expires."""
        ...


NodeRefused = Callable[[int, RefusalReason, str], None]
"""``node_refused(node_id, reason, message)``."""
_NODE_STATUS_REASONS = frozenset({RefusalReason.REVOKED, RefusalReason.EXPIRED})
"""Refusals of a verified node that become its status (``supernode list``)."""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Callable[[], Authenticator],
        clock: Clock,
        refusals: RefusalLog,
        *,
        digest_bodies: bool = False,
        audit: AuditSink | None = None,
        failures: FailureLimiter | None = None,
        calls_per_address: int | None = None,
        live: LiveCalls | None = None,
        node_refused: NodeRefused | None = None,
        serves: str = "",
        metrics: AuthMetrics | None = None,
    ) -> None:
        """``digest_bodies``: hash each unary request's bytes, and each signed upload's declared
        object, for EC-key signatures.
        ``audit``: where audit records go (:mod:`flwrmtls.auth.audit` says which calls).
        ``failures``: the failed-authentication budget of each peer address; an address over
        it is refused (UNAVAILABLE, with when to retry) before anything is parsed.
        ``calls_per_address``: authorized calls one peer address may have in progress.
        ``live``: the registry of open calls, judged again when credentials may have ended.
        ``node_refused``: told when a node the link verified is refused for its certificate
        (revoked, expired), with the reason and the message, so its status can show it.
        ``serves``: the service this server serves (``Fleet``, ``Control``, ...): a call of
        another service is told which door it knocked on (UNIMPLEMENTED).
        ``metrics``: told of each refusal and of each certificate's time left (off: None)."""
        self._authenticator = authenticator
        self._clock = clock
        self._refusals = refusals
        self._digest_bodies = digest_bodies
        self._audit = audit
        self._failures = failures
        self._calls_per_address = calls_per_address
        self._live: dict[str, int] = {}
        """Peer host -> its authorized calls in progress (only hosts with some)."""
        self._open_calls = live
        self._node_refused = node_refused
        self._serves = serves
        self._metrics = metrics

    @property
    def serves(self) -> str:
        """The service this interceptor's server serves (``Fleet``, ``Control``, ...)."""
        return self._serves

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        if required_kinds(method) is None:
            return self._refusing_handler(method)
        handler = await continuation(handler_call_details)
        if handler is None:
            return self._wrong_door_handler(method) if self._serves else None
        on_end = None
        if self._audit is not None and records_every_call(method):
            on_end = functools.partial(self._record_call, method)
        return wrap(
            handler,
            Gate(
                authorize=lambda context, digest: self._authorize(method, context, digest),
                watch=self._watch,
                refuse=self._end_refused,
                on_end=on_end,
            ),
            digest_bodies=self._digest_bodies,
        )

    async def _authorize(
        self, method: str, context: _Context, body_digest: bytes
    ) -> tuple[Principal, Release, CallCredentials]:
        peer = context.peer()
        auth_context = context.auth_context()
        token, signature = _app_credentials(context, body_digest)
        call = CallCredentials(
            method=method,
            peer=peer,
            leaf_pem=_first(auth_context, "x509_pem_cert"),
            chain_pem=_first(auth_context, "x509_pem_cert_chain"),
            token=token,
            key_signature=signature,
        )
        host = peer_host(peer)
        presented = _presented_credential(call)
        if self._failures is not None:
            wait = self._failures.wait(host, presented)
            if wait is not None:
                limited = AuthenticationFailed(
                    RefusalReason.RATE_LIMITED,
                    f"too many failed authentications from {host}: retry in {wait:.1f} s",
                )
                self._refused(call, limited, None)
                context.set_trailing_metadata(((REFUSAL_METADATA_KEY, limited.reason.value),))
                await context.abort(grpc.StatusCode.UNAVAILABLE, limited.message)
        try:
            principal = await self._authenticate(call)
        except AuthenticationFailed as error:
            if self._failures is not None and not isinstance(error.reason, Refusal):
                self._failures.failed(host, presented)  # the caller's, not the link's state
            self._refused(call, error, None)
            await _answer(context, error)
            raise  # abort raises; this keeps type checkers aware
        except TryLater as busy:  # a bound is reached: nodes retry UNAVAILABLE with backoff
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(busy))
            raise
        if self._failures is not None:
            self._failures.succeeded(host, presented)
        if self._metrics is not None:
            self._observe_expiry(self._metrics, principal)
        if not is_permitted(method, principal.kind):
            hint = refusal_hint(method, principal.kind)
            refusal = AuthenticationFailed(
                RefusalReason.NOT_PERMITTED,
                f"{principal.kind.value} certificate {principal.identity!r} may not call "
                f"{method.rsplit('/', 1)[-1]}" + (f": {hint}" if hint else ""),
                principal.fingerprint,
            )
            self._refused(call, refusal, principal)
            context.set_trailing_metadata(((REFUSAL_METADATA_KEY, refusal.reason.value),))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal.message)
        return principal, await self._admit(host, context), call

    async def _authenticate(self, call: CallCredentials) -> Principal:
        """The authenticator's principal; a decision it is still finding out about (an OCSP
        answer for a certificate seen for the first time) is awaited, bounded, then asked for
        once more: still pending, it is TryLater (UNAVAILABLE: nodes retry)."""
        try:
            return self._authenticator().authenticate(call, self._clock.now())
        except DecisionPending as pending:
            await pending.wait()
        return self._authenticator().authenticate(call, self._clock.now())

    def _observe_expiry(self, metrics: AuthMetrics, principal: Principal) -> None:
        """A certificate's time left (the chain's earliest expiry), as kube-apiserver does."""
        if principal.auth_method is AuthMethod.CERTIFICATE and principal.not_after is not None:
            left = (principal.not_after - self._clock.now()).total_seconds()
            metrics.admitted(principal.kind.value, left)

    async def _admit(self, host: str, context: _Context) -> Release:
        """Count the call against its address's calls in progress, or refuse it (UNAVAILABLE:
        nodes retry) when the address has ``calls_per_address`` in progress already."""
        if self._calls_per_address is None:
            return None
        live = self._live.get(host, 0)
        if live >= self._calls_per_address:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"too many calls in progress from {host} ({live}; the link allows "
                f"{self._calls_per_address} per address): retry when some have ended",
            )
        self._live[host] = live + 1

        def release() -> None:
            left = self._live[host] - 1
            if left:
                self._live[host] = left
            else:
                del self._live[host]

        return release

    async def _end_refused(
        self,
        context: _Context,
        call: CallCredentials,
        principal: Principal,
        refusal: AuthenticationFailed,
    ) -> None:
        """Answer an open call with a refusal that came after it started: the registry's (its
        task may have been cancelled for it) or an upload's chunk that broke its declaration.
        Logged and audited like any refusal; raises grpc's AbortError."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        self._refused(call, refusal, principal)
        await _answer(context, refusal)

    def _watch(self, call: CallCredentials, principal: Principal) -> Watching:
        """Keep the call in the registry while its handler runs."""
        return Watching(self._open_calls, call, principal, self._authenticator)

    def _wrong_door_handler(self, method: str) -> Any:
        """The handler of another API's method: it says which door this is (no credentials
        are asked for: the port's API is no secret)."""
        message = wrong_door(method, self._serves)

        async def wrong_door_answer(request: Any, context: _Context) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        return grpc.unary_unary_rpc_method_handler(wrong_door_answer)

    def _refusing_handler(self, method: str) -> Any:
        """The handler of a method the policy table does not list: it refuses at once."""

        async def refuse_unlisted(request: Any, context: _Context) -> Any:
            error = AuthenticationFailed(
                RefusalReason.NOT_PERMITTED, f"method {method} is not permitted"
            )
            leaf_pem = _first(context.auth_context(), "x509_pem_cert")
            call = CallCredentials(method, context.peer(), leaf_pem=leaf_pem, chain_pem=None)
            self._refused(call, error, None)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, error.message)

        return grpc.unary_unary_rpc_method_handler(refuse_unlisted)

    def _refused(
        self, call: CallCredentials, error: AuthenticationFailed, principal: Principal | None
    ) -> None:
        """Log the refusal (rate-limited) and record it in the audit trail, if it is kept; a
        verified node refused for its certificate is also reported to ``node_refused``."""
        node_id = principal.node_id if principal is not None else error.node_id
        reason = error.reason
        if (
            self._node_refused is not None
            and node_id is not None
            and isinstance(reason, RefusalReason)
            and reason in _NODE_STATUS_REASONS
        ):
            self._node_refused(node_id, reason, error.message)
        if self._metrics is not None:
            self._metrics.refused(self._serves, reason.value)
        reported = self._refusals.record(call.peer, call.method, error)
        if self._audit is None:
            return
        every = records_every_refusal(call.method)
        if reported is None and not every:
            return  # counted by the refusal log; the next entry reports the count
        if principal is None:
            identity, auth_method = _presented_identity(call, error)
        else:
            identity, auth_method = principal.identity, principal.auth_method
        detail = error.message
        if error.fingerprint and not error.fingerprint.startswith("SHA256:"):
            detail += f" (certificate sha256:{error.fingerprint})"
        if reported is not None and reported.repeats:
            detail += f"; {reported.repeats} more like it since the previous report"
        if reported is not None and reported.held_back:
            detail += (
                f"; {reported.held_back} other refusals from this address held back since its "
                "previous report"
            )
        self._record(
            AuditRecord(
                timestamp=self._clock.now().timestamp(),
                identity=identity,
                auth_method=auth_method.value,
                method=call.method,
                outcome=error.reason.value,
                detail=detail,
                peer=call.peer,
                retention=Retention.REFUSAL,
            )
        )

    def _record_call(
        self,
        method: str,
        principal: Principal,
        context: _Context,
        peer: str,
        error: BaseException | None,
    ) -> None:
        outcome, detail = _outcome(context, error)
        self._record(
            AuditRecord(
                timestamp=self._clock.now().timestamp(),
                identity=principal.identity,
                auth_method=principal.auth_method.value,
                method=method,
                outcome=outcome,
                detail=detail,
                peer=peer,
                retention=retention_of(method, outcome),
            )
        )

    def _record(self, record: AuditRecord) -> None:
        assert self._audit is not None
        try:
            self._audit(record)
        except Exception as error:  # the trail must not take the call down with it
            log.error(
                "audit trail: cannot record %s by %s: %s", record.method, record.identity, error
            )
