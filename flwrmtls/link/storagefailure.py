"""A failure of the link's storage ends the call with one clear status, never UNKNOWN.

Rules:

* A call whose handler, or the authentication before it, meets a failure of the link's
  database (:class:`sqlite3.Error`) or of its object directory (an :class:`OSError` of
  :data:`STORAGE_ERRNOS`: a full disk, a quota, an I/O error, a read-only or too-large file)
  ends with the status :data:`FAILURES` gives it and one line: "the link's database failed:
  <reason>; see the link's log" (or "the link's object storage failed: ..."). Nodes retry
  UNAVAILABLE with backoff; the CLI prints the line (:mod:`flwrmtls.wire.errors`).
* The link logs it once per call, as an error: the method, the caller when it is known, and
  the reason with SQLite's error name or the errno; no traceback (the cause is the machine's),
  and the link keeps serving the calls that need no write.
* Each change the call made is whole or absent (:mod:`flwrmtls.state.transaction`); an
  object whose write failed is not stored (:mod:`flwrmtls.objects.store`).
* Any other error is left as it is (a bug must not pass for the machine's trouble).

==============================================  ===========  ==================================
error                                           status       why
==============================================  ===========  ==================================
``sqlite3.OperationalError``: disk full, I/O    UNAVAILABLE  the machine's trouble: the same
error, database locked, read-only database                   call may pass later (nodes retry)
any other ``sqlite3.Error``: a corrupt file,    INTERNAL     retrying will not help: the
a constraint, a closed database                              operator must look at the link
``OSError`` ENOSPC, EDQUOT, EIO, EROFS, EFBIG   UNAVAILABLE  the machine's trouble, as above
writing an object
==============================================  ===========  ==================================

The same wrapper answers a :class:`~flwrmtls.wire.refusals.CallRefused` a handler raises, as
the refusal catalogue's row says (:mod:`flwrmtls.wire.refusals`).

Installed twice on each server: inside the authentication interceptor (so the audit trail
records the call's real status) and outside it (authentication writes too: identity pins).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.interceptor import current_principal
from flwrmtls.wire.refusals import CallRefused, answer_refused

__all__ = ["FAILURES", "STORAGE_ERRNOS", "StorageFailureInterceptor", "storage_failure"]

log = logging.getLogger("flwrmtls.link")

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
"""What a failing, full or read-only disk makes a write raise."""

FAILURES: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (sqlite3.OperationalError, grpc.StatusCode.UNAVAILABLE, "database"),
    (sqlite3.Error, grpc.StatusCode.INTERNAL, "database"),
    (OSError, grpc.StatusCode.UNAVAILABLE, "object storage"),
)
"""(error class, status, what failed), first match wins; OSErrors only of STORAGE_ERRNOS."""


def storage_failure(error: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status and the one line a call that met ``error`` ends with; None if ``error`` is
    not a failure of the link's storage."""
    if isinstance(error, OSError) and error.errno not in STORAGE_ERRNOS:
        return None
    for kind, code, what in FAILURES:
        if isinstance(error, kind):
            reason = error.strerror if isinstance(error, OSError) else str(error)
            reason = " ".join(str(reason or "").split()) or type(error).__name__
            return code, f"the link's {what} failed: {reason}; see the link's log"
    return None


def _caller() -> str:
    try:
        principal = current_principal()
    except LookupError:  # failed while authenticating: not known yet
        return ""
    return f" by {principal.identity or principal.kind.value}"


async def _answer(method: str, error: Exception, context: _Context) -> None:
    """End the call as the table says, or raise ``error`` again when it is not listed."""
    failure = storage_failure(error)
    if failure is None:
        raise error
    code, line = failure
    if isinstance(error, OSError):
        name = errno.errorcode.get(error.errno or 0, "OSError")
    else:
        name = getattr(error, "sqlite_errorname", "") or type(error).__name__
    log.error(
        "%s during %s%s: %s (%s); answered %s",
        line.split(":", 1)[0], method.rsplit("/", 1)[-1], _caller(),
        error.strerror if isinstance(error, OSError) else error, name, code.name,
    )  # fmt: skip
    await context.abort(code, line)


class StorageFailureInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
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
    """The same handler, answering a storage failure as the table says."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: _Context) -> Any:
            try:
                return await inner(request, context)
            except CallRefused as refused:
                await answer_refused(context, refused)
            except (sqlite3.Error, OSError) as error:
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
        except CallRefused as refused:
            await answer_refused(context, refused)
        except (sqlite3.Error, OSError) as error:
            await _answer(method, error, context)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(streamed, deserialize, serialize)
