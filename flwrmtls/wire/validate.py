"""Refuse a request whose numeric fields are out of range, before its handler runs.

Rules:

* Every request of every method passes :func:`flwrmtls.wire.bounds.request_problem`; each
  message of a client stream is checked as it arrives. A refused request ends the call as the
  error catalogue's ``invalid-request`` (``INVALID_ARGUMENT``) with the one line naming the
  field: the handler never sees the value.
* Installed after the auth interceptor, so an unauthenticated caller is refused for who it is
  before anything about its request is said.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from flwrmtls.wire.bounds import request_problem
from flwrmtls.wire.refusals import Refusal, refuse

__all__ = ["RequestBoundsInterceptor"]

_Context = Any  # grpc.aio.ServicerContext


async def _check(request: Any, context: _Context) -> None:
    problem = request_problem(request)
    if problem is not None:
        await refuse(context, Refusal.INVALID_REQUEST, problem)


async def _checked_stream(requests: AsyncIterator[Any], context: _Context) -> AsyncIterator[Any]:
    async for request in requests:
        await _check(request, context)
        yield request


class RequestBoundsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _checking(handler)


def _checking(handler: Any) -> Any:
    """The same handler, checking each request first. (grpc's stubs type only sync ones.)"""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: _Context) -> Any:
            await _check(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            await _check(request, context)
            async for response in inner_us(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: _Context) -> Any:
            return await inner_su(_checked_stream(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: _Context) -> AsyncIterator[Any]:
        async for response in inner_ss(_checked_stream(requests, context), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
