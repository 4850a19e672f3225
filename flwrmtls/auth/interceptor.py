"""The only place authentication touches gRPC.

A grpc.aio server interceptor sees a call's method name but not its TLS peer, so it returns
the method's handler wrapped: the wrapper collects the call's credentials from the auth
context, asks the authenticator for the principal, checks the policy table, and runs the
handler with the principal available through :func:`current_principal`. Unlisted methods get
a handler that refuses at once.

Refusals are logged once per (certificate or peer, reason) and interval, with the peer
address, the reason and the certificate's SHA-256 fingerprint, never the certificate itself.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    KeySignature,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.policy import is_permitted, required_kinds
from flwrmtls.auth.signing import key_signature_from_metadata
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.clock import Clock

__all__ = ["REFUSAL_METADATA_KEY", "AuthInterceptor", "RefusalLog", "current_principal"]

log = logging.getLogger("flwrmtls.link.auth")

REFUSAL_METADATA_KEY = "flwrmtls-refusal"
"""Trailing metadata naming the :class:`RefusalReason` of a refused call."""

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("flwrmtls_principal")


def current_principal() -> Principal:
    """The authenticated caller of the call being handled (set by the interceptor)."""
    return _principal.get()


class RefusalLog:
    """Log each refusal once per (who, reason) and interval, then count repeats silently."""

    def __init__(self, clock: Clock, interval: float = 600.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def record(self, peer: str, method: str, error: AuthenticationFailed) -> None:
        who = error.fingerprint or peer.rsplit(":", 1)[0]
        key = (who, error.reason.value)
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        repeats = f" ({last[1]} more since last report)" if last and last[1] else ""
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
            repeats,
        )
        self._last[key] = (now, 0)
        if len(self._last) > 100_000:
            self._last.clear()


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> bytes | None:
    return next(iter(auth_context.get(key, ())), None)


def _app_credentials(
    context: _Context, body_digest: bytes
) -> tuple[str | None, KeySignature | None]:
    """The run token and the EC-key signature a call carries in its metadata, if any."""
    metadata = list(context.invocation_metadata() or ())
    token = next((str(value) for key, value in metadata if key == TOKEN_METADATA_KEY), None)
    return token, key_signature_from_metadata(metadata, body_digest)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Callable[[], Authenticator],
        clock: Clock,
        refusals: RefusalLog,
        *,
        digest_bodies: bool = False,
    ) -> None:
        """``digest_bodies``: hash each unary request's bytes, for EC-key signatures."""
        self._authenticator = authenticator
        self._clock = clock
        self._refusals = refusals
        self._digest_bodies = digest_bodies

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        if required_kinds(method) is None:
            return _refusing_handler(method)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(
            handler,
            lambda context, digest: self._authorize(method, context, digest),
            digest_bodies=self._digest_bodies,
        )

    async def _authorize(self, method: str, context: _Context, body_digest: bytes) -> Principal:
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
        try:
            principal = self._authenticator().authenticate(call, self._clock.now())
        except AuthenticationFailed as error:
            self._refusals.record(peer, method, error)
            context.set_trailing_metadata(((REFUSAL_METADATA_KEY, error.reason.value),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
            raise  # abort raises; this keeps type checkers aware
        if not is_permitted(method, principal.kind):
            refusal = AuthenticationFailed(
                RefusalReason.NOT_PERMITTED,
                f"{principal.kind.value} certificate {principal.identity!r} may not call "
                f"{method.rsplit('/', 1)[-1]}",
                principal.fingerprint,
            )
            self._refusals.record(peer, method, refusal)
            context.set_trailing_metadata(((REFUSAL_METADATA_KEY, refusal.reason.value),))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal.message)
        return principal


Authorize = Callable[[_Context, bytes], Awaitable[Principal]]


def _digesting(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A request deserializer that also returns the SHA-256 of the bytes received."""

    def deserialize(raw: bytes) -> tuple[Any, bytes]:
        message = deserializer(raw) if deserializer is not None else raw
        return message, hashlib.sha256(raw).digest()

    return deserialize


def _wrap(handler: Any, authorize: Authorize, *, digest_bodies: bool) -> Any:
    """The same handler, authorizing first. (grpc's stubs type only sync handlers.)

    With ``digest_bodies``, unary requests are deserialized together with the digest of their
    bytes; client-streaming requests are authorized with an empty digest.
    """
    request_deserializer = handler.request_deserializer
    if digest_bodies and (handler.unary_unary or handler.unary_stream):
        request_deserializer = _digesting(handler.request_deserializer)

    def split(request: Any) -> tuple[Any, bytes]:
        if digest_bodies:
            message, digest = request
            return message, digest
        return request, b""

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: _Context) -> Any:
            message, digest = split(request)
            token = _principal.set(await authorize(context, digest))
            try:
                return await inner_uu(message, context)
            finally:
                _principal.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            message, digest = split(request)
            token = _principal.set(await authorize(context, digest))
            try:
                async for response in inner_us(message, context):
                    yield response
            finally:
                _principal.reset(token)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: _Context) -> Any:
            token = _principal.set(await authorize(context, b""))
            try:
                return await inner_su(requests, context)
            finally:
                _principal.reset(token)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: _Context) -> AsyncIterator[Any]:
        token = _principal.set(await authorize(context, b""))
        try:
            async for response in inner_ss(requests, context):
                yield response
        finally:
            _principal.reset(token)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


def _refusing_handler(method: str) -> Any:
    async def refuse(request: Any, context: _Context) -> Any:
        log.warning("refused %s calling %s: not in the policy table", context.peer(), method)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"method {method} is not permitted")

    return grpc.unary_unary_rpc_method_handler(refuse)
