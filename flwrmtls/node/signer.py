"""The node's side of EC-key authentication: sign every Fleet call.

A client interceptor adds the four signature entries (see :mod:`flwrmtls.auth.signing`) to
each call's metadata. For calls with one request, the signature covers the SHA-256 of the
request's serialized bytes, exactly as the link receives them; for client-streaming calls
(object uploads, whose bytes are verified against their SHA-256 anyway) it covers an empty
digest. The key is loaded once; signing costs one ECDSA signature per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from flwrmtls.auth.signing import CallSigner, body_digest
from flwrmtls.clock import Clock, SystemClock

__all__ = ["SigningInterceptor"]


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, signer: CallSigner, clock: Clock | None = None) -> None:
        self._signer = signer
        self._clock = clock or SystemClock()

    def _signed(self, details: Any, digest: bytes) -> _Details:
        method = details.method if isinstance(details.method, str) else details.method.decode()
        metadata: list[tuple[str, str | bytes]] = list(details.metadata or ())
        metadata.extend(self._signer.metadata(method, digest, self._clock.now()))
        return _Details(details, metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        digest = body_digest(request.SerializeToString())
        return continuation(self._signed(client_call_details, digest), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        digest = body_digest(request.SerializeToString())
        return continuation(self._signed(client_call_details, digest), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._signed(client_call_details, b""), request_iterator)
