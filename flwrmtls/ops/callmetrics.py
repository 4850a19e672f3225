"""Calls timed and bytes counted, at the edge: a server interceptor (the link) and a client
interceptor (a node), installed only when metrics are on.

Rules:

* The link's interceptor is the outermost of each listener, so a call's time includes its
  authentication and a refused call is counted with its status code (UNAUTHENTICATED, ...).
* A call's code is what the caller got: the code the handler set or aborted with, CANCELLED
  when the caller went away, UNKNOWN when the handler raised, else OK.
* Bytes are the serialized messages as they cross the wire (each request deserialized, each
  response serialized), counted by wrapping grpc's own (de)serializers: no second
  serialization.
* Labels are the API (the listener), the method's short name and the code: closed sets.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from flwrmtls.clock import Clock
from flwrmtls.ops.metrics import LinkMetrics, NodeMetrics

__all__ = ["CallMetricsInterceptor", "NodeCallMetrics"]


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _code(context: Any, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if code is not None:
        return str(getattr(code, "name", code))
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class CallMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: LinkMetrics, api: str, clock: Clock) -> None:
        self._metrics = metrics
        self._api = api
        self._clock = clock

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _short(handler_call_details.method)
        api, metrics, clock = self._api, self._metrics, self._clock

        def counted(function: Callable[[Any], Any] | None, direction: str) -> Any:
            if function is None:
                return None

            def count(value: Any) -> Any:
                result = function(value)
                size = len(value) if direction == "received" else len(result)
                metrics.payload(api, method, direction, size)
                return result

            return count

        def timed(behavior: Callable[..., Any] | None) -> Any:
            if behavior is None:
                return None
            if inspect.isasyncgenfunction(behavior):

                async def timed_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    start = clock.monotonic()
                    error: BaseException | None = None
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except BaseException as raised:
                        error = raised
                        raise
                    finally:
                        metrics.call(api, method, _code(context, error), clock.monotonic() - start)

                return timed_stream

            async def timed_call(request: Any, context: Any) -> Any:
                start = clock.monotonic()
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    metrics.call(api, method, _code(context, error), clock.monotonic() - start)

            return timed_call

        return handler._replace(
            request_deserializer=counted(handler.request_deserializer, "received"),
            response_serializer=counted(handler.response_serializer, "sent"),
            unary_unary=timed(handler.unary_unary),
            unary_stream=timed(handler.unary_stream),
            stream_unary=timed(handler.stream_unary),
            stream_stream=timed(handler.stream_stream),
        )


class NodeCallMetrics(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Times a node's unary Fleet calls (activate, heartbeat, pull, push...), each when it
    finishes: the call is handed back at once, so a future (the node's long poll) stays a
    future its caller can cancel."""

    def __init__(self, metrics: NodeMetrics, clock: Clock) -> None:
        self._metrics = metrics
        self._clock = clock

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        start = self._clock.monotonic()
        outcome = continuation(client_call_details, request)
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()

        def finished(call: Any) -> None:
            code = call.code()
            self._metrics.call(
                _short(method), str(getattr(code, "name", code)), self._clock.monotonic() - start
            )

        outcome.add_done_callback(finished)
        return outcome
