"""A failure of the link's database ends the call with one clear status, never UNKNOWN.

Rules:

* A call whose handler, or the authentication before it, raises :class:`sqlite3.Error` ends
  with the status :data:`STATUSES` gives its error and one line: "the link's database failed:
  <SQLite's reason>; see the link's log". Nodes retry UNAVAILABLE with backoff; the CLI
  prints the line (:mod:`flwrmtls.wire.errors`).
* The link logs it once per call, as an error: the method, the caller when it is known, and
  SQLite's reason and error name; no traceback (the cause is the machine's: a full disk, an
  I/O error, a lock held by another process), and the link keeps serving the calls that do
  not need to write.
* What the call changed in the database is whole or absent (:mod:`flwrmtls.state.transaction`).

========================================  ===========  ========================================
error                                     status       why
========================================  ===========  ========================================
``OperationalError``: disk full, I/O      UNAVAILABLE  the machine's trouble: the same call
error, database locked, read-only file                 may pass later (nodes retry it)
any other ``sqlite3.Error``: a corrupt    INTERNAL     retrying will not help: the operator
file, a constraint, a closed database                  must look at the link
========================================  ===========  ========================================

Installed twice on each server: inside the authentication interceptor (so the audit trail
records the call's real status) and outside it (authentication writes too: identity pins).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.interceptor import current_principal

__all__ = ["STATUSES", "DatabaseFailureInterceptor", "database_failure"]

log = logging.getLogger("flwrmtls.link")

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one

STATUSES: tuple[tuple[type[sqlite3.Error], grpc.StatusCode], ...] = (
    (sqlite3.OperationalError, grpc.StatusCode.UNAVAILABLE),
    (sqlite3.Error, grpc.StatusCode.INTERNAL),
)
"""(error class, status), first match wins."""


def database_failure(error: sqlite3.Error) -> tuple[grpc.StatusCode, str]:
    """The status and the one line a call that met ``error`` ends with."""
    code = next(status for kind, status in STATUSES if isinstance(error, kind))
    reason = " ".join(str(error).split()) or type(error).__name__
    return code, f"the link's database failed: {reason}; see the link's log"


def _caller() -> str:
    try:
        principal = current_principal()
    except LookupError:  # failed while authenticating: not known yet
        return ""
    return f" by {principal.identity or principal.kind.value}"


async def _answer(method: str, error: sqlite3.Error, context: _Context) -> None:
    code, line = database_failure(error)
    name = getattr(error, "sqlite_errorname", "") or type(error).__name__
    log.error(
        "the link's database failed during %s%s: %s (%s); answered %s",
        method.rsplit("/", 1)[-1], _caller(), error, name, code.name,
    )  # fmt: skip
    await context.abort(code, line)


class DatabaseFailureInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _guarded(handler, handler_call_details.method)


def _guarded(handler: Any, method: str) -> Any:
    """The same handler, answering a database failure as the table says."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: _Context) -> Any:
            try:
                return await inner(request, context)
            except sqlite3.Error as error:
                await _answer(method, error, context)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, deserialize, serialize)
    inner_stream = handler.unary_stream or handler.stream_stream

    async def streamed(request: Any, context: _Context) -> AsyncIterator[Any]:
        try:
            async for response in inner_stream(request, context):
                yield response
        except sqlite3.Error as error:
            await _answer(method, error, context)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(streamed, deserialize, serialize)
