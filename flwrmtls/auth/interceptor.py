"""The only place authentication touches gRPC.

A grpc.aio server interceptor sees a call's method name but not its TLS peer, so it returns
the method's handler wrapped: the wrapper collects the call's credentials from the auth
context, asks the authenticator for the principal, checks the policy table, and runs the
handler with the principal available through :func:`current_principal`. Unlisted methods get
a handler that refuses at once.

Refusals are logged once per (certificate, key or peer, reason) and interval, and at most
``per_address`` times per peer address and interval, with the peer address, the reason and the
certificate's SHA-256 fingerprint, never the certificate itself.

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
the ``flwrmtls-refusal`` trailer). The handler's task is cancelled while it waits inside the
handler; while grpc is sending a streamed response the refusal is answered as soon as the
send completes (a caller that stops reading a stream holds that send until it reads again).

A signed client-streaming call (an EC-key node's object upload) declares its object in
``flwrmtls-object`` metadata and signs that declaration; every chunk of the stream must name
that object and size, or the call is refused (``bad-signature``) before the chunk is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography import x509

from flwrmtls.auth.audit import (
    OUTCOME_OK,
    AuditRecord,
    AuditSink,
    Retention,
    call_changed,
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
from flwrmtls.auth.callsigning import (
    OBJECT_METADATA_KEY,
    declared_object_digest,
    key_signature_from_metadata,
    parse_object_declaration,
)
from flwrmtls.auth.identity import ROLE_OID
from flwrmtls.auth.livecalls import LiveCall, LiveCalls
from flwrmtls.auth.policy import is_permitted, refusal_hint, required_kinds, wrong_door
from flwrmtls.auth.ratelimit import FailureLimiter, peer_host
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.clock import Clock
from flwrmtls.wire.metadata import REFUSAL_KEY
from flwrmtls.wire.refusals import Refusal, refuse

__all__ = [
    "REFUSAL_METADATA_KEY",
    "AuthInterceptor",
    "AuthMetrics",
    "RefusalLog",
    "Reported",
    "acting_as",
    "caller_name",
    "current_principal",
]

log = logging.getLogger("flwrmtls.link.auth")

REFUSAL_METADATA_KEY = REFUSAL_KEY
"""Trailing metadata naming the :class:`RefusalReason` of a refused call."""

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("flwrmtls_principal")


def _reset(token: contextvars.Token[Principal]) -> None:
    """Undo the principal; a streaming handler closed from another context cannot, and need
    not: each call runs in its own task, whose context ends with it."""
    with contextlib.suppress(ValueError):
        _principal.reset(token)


def current_principal() -> Principal:
    """The authenticated caller of the call being handled (set by the interceptor)."""
    return _principal.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Handle calls as ``principal`` without the interceptor: a servicer called in-process
    (its unit tests). Nothing on the network reaches a servicer this way."""
    token = _principal.set(principal)
    try:
        yield
    finally:
        _reset(token)


def caller_name() -> str:
    """Who makes the call being handled, for a log line: its identity (or its kind); "" while
    it is not known yet (failed while authenticating)."""
    try:
        principal = current_principal()
    except LookupError:
        return ""
    return principal.identity or principal.kind.value


@dataclass(frozen=True, slots=True)
class Reported:
    """A refusal the log reported (logged, and worth an audit entry)."""

    repeats: int
    """Like refusals (same certificate or key, or peer, and reason) counted since the last."""
    held_back: int
    """Other refusals from the same address left out since its last report, because it
    reached its budget of distinct reports (a fresh key per call, a new certificate...)."""


class RefusalLog:
    """Log each refusal once per (who, reason) and interval, then count repeats silently.

    "Who" is the certificate's or key's fingerprint, or the peer's address without one; and
    each peer address gets at most ``per_address`` reports per interval whatever it presents,
    so a caller with a fresh key per call costs a counter, not a log line or audit entry each.
    Both tables are bounded (least recently used forgotten first).
    """

    def __init__(
        self,
        clock: Clock,
        interval: float = 600.0,
        *,
        per_address: int = 10,
        max_entries: int = 100_000,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._per_address = per_address
        self._max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        """(who, reason) -> (when last reported, like refusals counted since)."""
        self._addresses: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        """Peer host -> (start of its interval, reports in it, refusals held back since its
        last report)."""

    def record(self, peer: str, method: str, error: AuthenticationFailed) -> Reported | None:
        """Log the refusal unless a like one was logged within the interval, or its address
        has used its reports for the interval. None when it was only counted."""
        host = peer_host(peer)
        key = (error.fingerprint or host, error.reason.value)
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        start, reports, held_back = self._addresses.get(host, (now, 0, 0))
        if now - start >= self._interval:
            start, reports = now, 0
        if reports >= self._per_address:
            self._remember(self._addresses, host, (start, reports, held_back + 1))
            return None
        self._remember(self._addresses, host, (start, reports + 1, 0))
        repeats = last[1] if last else 0
        notes = f" ({repeats} more since last report)" if repeats else ""
        if held_back:
            notes += f" ({held_back} other refusals from this address held back)"
        fingerprint = ""
        if error.fingerprint.startswith("SHA256:"):
            fingerprint = f" key {error.fingerprint}"
        elif error.fingerprint:
            fingerprint = f" certificate sha256:{error.fingerprint}"
        log.warning(
            "refused %s calling %s: %s: %s%s%s",
            peer,
            method,
            error.reason.value,
            error.message,
            fingerprint,
            notes,
        )
        self._remember(self._last, key, (now, 0))
        return Reported(repeats, held_back)

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self._max_entries:
            table.popitem(last=False)


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
        return _wrap(
            handler,
            _Gate(
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

    def _watch(self, call: CallCredentials, principal: Principal) -> _Watching:
        """Keep the call in the registry while its handler runs."""
        return _Watching(self._open_calls, call, principal, self._authenticator)

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


Release = Callable[[], None] | None
"""Called once when an authorized call ends (frees its place in the calls per address)."""
Admitted = tuple[Principal, Release, CallCredentials]
"""An authorized call: who, how to free its place in the calls per address, what it presented."""
Authorize = Callable[[_Context, bytes], Awaitable[Admitted]]
OnEnd = Callable[[Principal, _Context, str, BaseException | None], None]
"""``on_end(principal, context, peer, error)``. When a streaming handler's generator is closed
after its caller went away (``GeneratorExit``, ``CancelledError``) the call is already
finished: ``context`` must then not be touched (grpc.aio segfaults on ``context.peer()`` of a
finished call), which is why the peer is taken when the call starts."""
Refuse = Callable[[_Context, CallCredentials, Principal, AuthenticationFailed], Awaitable[None]]
Watch = Callable[[CallCredentials, Principal], "_Watching"]


class _Ending:
    """How the registry ends one open call: remember the refusal, and cancel the handler's
    task if it is waiting inside the handler. While grpc is sending a streamed response
    (``in_handler`` False) cancelling would leave the call without a status, so the wrapper
    answers the refusal when the send completes instead."""

    __slots__ = ("_task", "in_handler", "refusal")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.refusal: AuthenticationFailed | None = None
        self.in_handler = True
        self._task = task

    def end(self, refusal: AuthenticationFailed) -> None:
        if self.refusal is not None:
            return
        self.refusal = refusal
        if self.in_handler and self._task is not None:
            self._task.cancel()


class _Watching:
    """While a handler runs, its call is in the registry (if the listener keeps one); the
    ``_Ending`` (None without a registry) says whether the registry ended it."""

    __slots__ = ("_ending", "_entry", "_live")

    def __init__(
        self,
        live: LiveCalls | None,
        call: CallCredentials,
        principal: Principal,
        authenticator: Callable[[], Authenticator],
    ) -> None:
        self._live = live
        self._ending: _Ending | None = None
        self._entry: LiveCall | None = None
        if live is not None:
            self._ending = _Ending(asyncio.current_task())
            self._entry = LiveCall(call, principal, authenticator, self._ending.end)

    def __enter__(self) -> _Ending | None:
        if self._live is not None and self._entry is not None:
            self._live.add(self._entry)
        return self._ending

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None and self._entry is not None:
            self._live.discard(self._entry)


def _refusal(ending: _Ending | None) -> AuthenticationFailed | None:
    return None if ending is None else ending.refusal


@dataclass(frozen=True, slots=True)
class _Gate:
    """What the wrapped handlers ask of the interceptor."""

    authorize: Authorize
    watch: Watch
    refuse: Refuse
    on_end: OnEnd | None


class _Handling:
    """While a handler runs its principal is current; when it ends, ``on_end`` hears how."""

    __slots__ = ("_changed", "_context", "_on_end", "_peer", "_principal", "_release", "_token")

    def __init__(
        self, principal: Principal, release: Release, context: _Context, on_end: OnEnd | None
    ) -> None:
        self._principal = principal
        self._release = release
        self._context = context
        self._on_end = on_end
        self._peer = context.peer() if on_end is not None else ""

    def __enter__(self) -> None:
        self._token = _principal.set(self._principal)
        self._changed = call_changed()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _reset(self._token)
        if self._release is not None:
            self._release()
        if self._on_end is not None:
            self._on_end(self._principal, self._context, self._peer, error)
        with contextlib.suppress(ValueError):
            self._changed.var.reset(self._changed)


def _digesting(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A request deserializer that also returns the SHA-256 of the bytes received."""

    def deserialize(raw: bytes) -> tuple[Any, bytes]:
        message = deserializer(raw) if deserializer is not None else raw
        return message, hashlib.sha256(raw).digest()

    return deserialize


def _declared_object(context: _Context) -> tuple[bytes, tuple[str, int] | None]:
    """The digest a signed upload signs (of its ``flwrmtls-object`` declaration) and the
    declared (object id, size); (b"", None) without one, which the authenticator refuses."""
    found = [
        value for key, value in context.invocation_metadata() or () if key == OBJECT_METADATA_KEY
    ]
    if len(found) != 1 or not isinstance(found[0], str):
        return b"", None
    try:
        return declared_object_digest(found[0]), parse_object_declaration(found[0])
    except ValueError:
        return b"", None


async def _held_to(
    declared: tuple[str, int],
    requests: AsyncIterator[Any],
    refuse: Callable[[AuthenticationFailed], Awaitable[None]],
) -> AsyncIterator[Any]:
    """The chunks of a signed upload, each checked against the object the signature covers."""
    object_id, size = declared
    async for chunk in requests:
        if chunk.object_id != object_id or chunk.total_size != size:
            await refuse(
                AuthenticationFailed(
                    RefusalReason.BAD_SIGNATURE,
                    f"the upload's chunks name object {chunk.object_id[:16]}... of "
                    f"{chunk.total_size} bytes, but its signature covers "
                    f"{object_id[:16]}... of {size} bytes",
                )
            )
        yield chunk


async def _answered(
    responses: AsyncIterator[Any], ending: _Ending | None
) -> AsyncIterator[Any | AuthenticationFailed]:
    """A handler's streamed responses, then the refusal if the registry ended the call."""
    async with contextlib.aclosing(responses) as opened:  # type: ignore[type-var]
        while True:
            try:
                response = await anext(opened)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                refusal = _refusal(ending)
                if refusal is None:
                    raise
                yield refusal
                return
            if (refusal := _refusal(ending)) is not None:
                yield refusal
                return
            if ending is not None:
                ending.in_handler = False
            yield response
            if ending is not None:
                ending.in_handler = True
            if (refusal := _refusal(ending)) is not None:
                yield refusal
                return


def _wrap(handler: Any, gate: _Gate, *, digest_bodies: bool) -> Any:
    """The same handler, authorizing first. (grpc's stubs type only sync handlers.)

    With ``digest_bodies``, unary requests are deserialized together with the digest of their
    bytes, and client-streaming requests are authorized with the digest of their declared
    object and held to it. ``gate.on_end`` hears how each authorized call ended (not
    refusals: the interceptor records those itself).
    """
    request_deserializer = handler.request_deserializer
    if digest_bodies and (handler.unary_unary or handler.unary_stream):
        request_deserializer = _digesting(handler.request_deserializer)

    def split(request: Any) -> tuple[Any, bytes]:
        if digest_bodies:
            message, digest = request
            return message, digest
        return request, b""

    async def streamed(
        responses: AsyncIterator[Any], admitted: Admitted, context: Any
    ) -> AsyncIterator[Any]:
        principal, release, call = admitted
        with (
            _Handling(principal, release, context, gate.on_end),
            gate.watch(call, principal) as ending,
        ):
            async for item in _answered(responses, ending):
                if isinstance(item, AuthenticationFailed):
                    await gate.refuse(context, call, principal, item)
                    return
                yield item

    async def unary(run: Callable[[], Awaitable[Any]], admitted: Admitted, context: Any) -> Any:
        principal, release, call = admitted
        with (
            _Handling(principal, release, context, gate.on_end),
            gate.watch(call, principal) as ending,
        ):
            try:
                return await run()
            except asyncio.CancelledError:
                refusal = _refusal(ending)
                if refusal is None:
                    raise
            await gate.refuse(context, call, principal, refusal)

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: _Context) -> Any:
            message, digest = split(request)
            admitted = await gate.authorize(context, digest)
            return await unary(lambda: inner_uu(message, context), admitted, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            message, digest = split(request)
            admitted = await gate.authorize(context, digest)
            async for response in streamed(inner_us(message, context), admitted, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer, handler.response_serializer
        )

    async def declared_requests(requests: Any, context: _Context) -> tuple[Any, Admitted]:
        if not digest_bodies:
            return requests, await gate.authorize(context, b"")
        digest, declared = _declared_object(context)
        admitted = await gate.authorize(context, digest)
        principal, _, call = admitted
        if declared is not None and call.key_signature is not None:
            requests = _held_to(
                declared,
                requests,
                lambda refusal: gate.refuse(context, call, principal, refusal),
            )
        return requests, admitted

    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: _Context) -> Any:
            held, admitted = await declared_requests(requests, context)
            return await unary(lambda: inner_su(held, context), admitted, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: _Context) -> AsyncIterator[Any]:
        held, admitted = await declared_requests(requests, context)
        async for response in streamed(inner_ss(held, context), admitted, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
