"""The node's side of EC-key authentication: sign every Fleet call, for this link.

A client interceptor adds the five signature entries (see :mod:`flwrmtls.auth.callsigning`) to
each call's metadata. The audience is the link's server key, learned from the TLS layer
(:mod:`flwrmtls.node.audience`). For calls with one request the signature covers the SHA-256
of the request's serialized bytes, exactly as the link receives them; for client-streaming
calls (object uploads) it covers the object the call declares in ``flwrmtls-object`` metadata
(its content hash and size, which :mod:`flwrmtls.objects.transfer` adds), and the link holds
every chunk to that declaration. The key is loaded once; signing costs one ECDSA signature
per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from flwrmtls.auth.callsigning import (
    OBJECT_METADATA_KEY,
    CallSigner,
    body_digest,
    declared_object_digest,
)
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
    def __init__(
        self, signer: CallSigner, audience: Callable[[], bytes], clock: Clock | None = None
    ) -> None:
        """``audience``: the link's server key hash, as the node learned it (it may raise
        LinkUnreachable or Refused, which reach the caller as they are)."""
        self._signer = signer
        self._audience = audience
        self._clock = clock or SystemClock()

    def _signed(self, details: Any, digest: bytes) -> _Details:
        method = details.method if isinstance(details.method, str) else details.method.decode()
        metadata: list[tuple[str, str | bytes]] = list(details.metadata or ())
        metadata.extend(self._signer.metadata(method, digest, self._clock.now(), self._audience()))
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
        declared = [
            value
            for key, value in client_call_details.metadata or ()
            if key == OBJECT_METADATA_KEY and isinstance(value, str)
        ]
        if len(declared) != 1:
            raise ValueError(
                "a signed upload must declare its object once (flwrmtls-object metadata)"
            )
        digest = declared_object_digest(declared[0])
        return continuation(self._signed(client_call_details, digest), request_iterator)
