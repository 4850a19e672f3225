"""The error catalogue: why a call was refused, or failed, as every side reads it. One table.

Rules:

* A servicer refuses by raising :class:`CallRefused` with a :class:`Refusal` code (never by
  aborting the call itself). One place answers it, :class:`RefusalInterceptor`, installed on
  every server of the link and of the node: the code's row (:data:`REFUSALS`) gives the gRPC
  status, the code goes in the ``flwrmtls-refusal`` trailer
  (:data:`~flwrmtls.wire.metadata.REFUSAL_KEY`), and the details (default: the row's meaning)
  are the sentence for people. A code therefore always comes with the status its row names.
* A failure of the link's storage is no refusal: the same interceptor answers it with the
  status and the one line :func:`failures` gives (UNAVAILABLE, which clients retry, for the
  machine's trouble; INTERNAL for the rest), logs it once with the method and the caller, and
  lets any other error through (a bug must not pass for the machine's trouble). It carries no
  code: the status says what a client does (retry, or not). A database failure is SQLite's or
  PostgreSQL's, as SQLAlchemy wraps it (:mod:`flwrmtls.dberrors`): the line and the log give
  what the engine said and its name for it (SQLite's error name, PostgreSQL's SQLSTATE), never
  the statement. Only the link opens a database: the catalogue looks for SQLAlchemy's errors
  only in a process that has loaded SQLAlchemy (:func:`failures`), so a node and every app
  process, which read this catalogue too, never import it (26 MiB each).
* A client reads the cause from the code, never from the status alone (:func:`refusal_of`,
  :func:`refusal_in`): a NOT_FOUND may mean an unknown session, a run that has ended or a
  missing object, and a RESOURCE_EXHAUSTED from grpc itself (a message over its size limit)
  is not a storage quota. A code whose status does not match its row, or a status without a
  code, is no :class:`Refusal`: the client treats it as an error it cannot act on. What each
  code makes a node do is the node's table (:data:`flwrmtls.fleet.client.NODE_ERRORS`, which
  covers every code the Fleet API states); the ClientApp process reads ``no-object`` and
  ``over-quota``; the CLI prints the line (:mod:`flwrmtls.wire.errors`).
* Codes are stable strings: a new one is added, none is renamed. Credential refusals
  (:class:`~flwrmtls.auth.authenticator.RefusalReason`, answered by the auth interceptor
  before any handler runs) use the same trailer with codes of their own; the two sets never
  share a value. What the link cannot judge for its own reasons while it authenticates is no
  credential refusal but a row here, answered by the auth interceptor through :func:`refuse`:
  ``ocsp-unavailable`` (no usable OCSP answer for a certificate of the caller's chain), which
  clients retry, on a new call or an open one.

==============================================  ===========  ==================================
storage failure (:func:`failures`)               status       why
==============================================  ===========  ==================================
``OperationalError``: disk full, I/O error,     UNAVAILABLE  the machine's trouble: the same
database locked, read-only database; a lost                  call may pass later (nodes retry)
PostgreSQL server, a lock wait over its limit
any other ``DatabaseError``: a corrupt file,    INTERNAL     retrying will not help: the
a constraint, a closed database                              operator must look at the link
``OSError`` ENOSPC, EDQUOT, EIO, EROFS, EFBIG   UNAVAILABLE  the machine's trouble, as above
writing an object
==============================================  ===========  ==================================
"""

from __future__ import annotations

import enum
import errno
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from flwrmtls.wire.metadata import REFUSAL_KEY

__all__ = [
    "REFUSALS",
    "STORAGE_ERRNOS",
    "Api",
    "CallRefused",
    "Refusal",
    "RefusalInterceptor",
    "RefusalRow",
    "failures",
    "refusal_in",
    "refusal_of",
    "refuse",
    "storage_failure",
]

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one


class Api(enum.StrEnum):
    FLEET = "Fleet"
    CONTROL = "Control"
    SERVERAPPIO = "ServerAppIo"
    CLIENTAPPIO = "ClientAppIo"
    ENROLLMENT = "Enrollment"


class Refusal(enum.StrEnum):
    UNKNOWN_SESSION = "unknown-session"
    SESSION_SUPERSEDED = "session-superseded"
    RUN_ENDED = "run-ended"
    RUN_NOT_FOR_NODE = "run-not-for-node"
    NO_OBJECT = "no-object"
    OVER_QUOTA = "over-quota"
    INVALID_MESSAGE = "invalid-message"
    FOREIGN_MESSAGE = "foreign-message"
    OBJECTS_NOT_PUSHED = "objects-not-pushed"
    INVALID_REQUEST = "invalid-request"
    NO_NODE = "no-node"
    NO_RUN = "no-run"
    NODE_STATE = "node-state"
    NOT_OWNER = "not-owner"
    LINK_UNREACHABLE = "link-unreachable"
    OCSP_UNAVAILABLE = "ocsp-unavailable"
    NO_ENROLL_TOKEN = "no-enroll-token"  # noqa: S105 - a refusal code
    ENROLL_TOKEN_STATE = "enroll-token-state"  # noqa: S105 - a refusal code
    TOKEN_REFUSED = "token-refused"  # noqa: S105 - a refusal code
    CSR_REFUSED = "csr-refused"
    ENROLL_RATE_LIMITED = "enroll-rate-limited"
    REQUEST_DENIED = "request-denied"
    NO_ENROLL_REQUEST = "no-enroll-request"
    ENROLL_REQUEST_STATE = "enroll-request-state"
    NOT_ENROLLING = "not-enrolling"
    RENEWAL_REFUSED = "renewal-refused"


@dataclass(frozen=True, slots=True)
class RefusalRow:
    status: grpc.StatusCode
    meaning: str
    """What happened, for people (and the default message)."""
    apis: frozenset[Api]
    """The APIs whose calls may be refused so."""


def _row(status: grpc.StatusCode, meaning: str, *apis: Api) -> RefusalRow:
    return RefusalRow(status, meaning, frozenset(apis))


REFUSALS: Mapping[Refusal, RefusalRow] = {
    # A node's session and work: the node acts on each (flwrmtls.fleet.client.NODE_ERRORS).
    Refusal.UNKNOWN_SESSION: _row(
        grpc.StatusCode.NOT_FOUND, "unknown session: activate the node again", Api.FLEET
    ),
    Refusal.SESSION_SUPERSEDED: _row(
        grpc.StatusCode.FAILED_PRECONDITION,
        "session superseded: a newer connection activated the same identity",
        Api.FLEET,
    ),
    Refusal.RUN_ENDED: _row(
        grpc.StatusCode.NOT_FOUND,
        "the run is not active: it ended, or never existed",
        Api.FLEET,
        Api.CLIENTAPPIO,
    ),
    Refusal.RUN_NOT_FOR_NODE: _row(
        grpc.StatusCode.NOT_FOUND, "the run has no work for this node", Api.FLEET
    ),
    Refusal.NO_OBJECT: _row(
        grpc.StatusCode.NOT_FOUND,
        "no such object (or not one this caller may read)",
        Api.FLEET,
        Api.SERVERAPPIO,
        Api.CLIENTAPPIO,
    ),
    Refusal.OVER_QUOTA: _row(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "over a storage bound of the link or the node", *Api
    ),
    # What a caller sent that the link (or the node) does not take.
    Refusal.INVALID_MESSAGE: _row(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message the link does not route (another run's, an unknown node, an id empty or "
        "used before)",
        Api.FLEET,
        Api.SERVERAPPIO,
        Api.CLIENTAPPIO,
    ),
    Refusal.FOREIGN_MESSAGE: _row(
        grpc.StatusCode.PERMISSION_DENIED,
        "a reply that is not this caller's to send (another source node, an answer to a "
        "message not sent to it, objects it did not store)",
        Api.FLEET,
        Api.CLIENTAPPIO,
    ),
    Refusal.OBJECTS_NOT_PUSHED: _row(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message names objects its sender did not push",
        Api.FLEET,
        Api.SERVERAPPIO,
    ),
    Refusal.INVALID_REQUEST: _row(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a request the server does not accept: the details name the field and why",
        *Api,
    ),
    # The CLI's: nodes and runs (Control).
    Refusal.NO_NODE: _row(grpc.StatusCode.NOT_FOUND, "no such node", Api.CONTROL),
    Refusal.NO_RUN: _row(grpc.StatusCode.NOT_FOUND, "no such run", Api.CONTROL),
    Refusal.NODE_STATE: _row(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the node is not in a state that allows this",
        Api.CONTROL,
    ),
    Refusal.NOT_OWNER: _row(
        grpc.StatusCode.PERMISSION_DENIED, "the run belongs to another user", Api.CONTROL
    ),
    # Join tokens (the CLI's: Control).
    Refusal.NO_ENROLL_TOKEN: _row(grpc.StatusCode.NOT_FOUND, "no such join token", Api.CONTROL),
    Refusal.ENROLL_TOKEN_STATE: _row(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the join token was used or revoked already",
        Api.CONTROL,
    ),
    # A new site asking for its certificate (Enrollment).
    Refusal.TOKEN_REFUSED: _row(
        grpc.StatusCode.PERMISSION_DENIED,
        "the join token is not good: unknown, used, expired or revoked (the details say "
        "which, to the holder of its secret): ask the operator for a new one",
        Api.ENROLLMENT,
    ),
    Refusal.CSR_REFUSED: _row(
        grpc.StatusCode.INVALID_ARGUMENT,
        "the certificate request is not one the link signs: the details say why",
        Api.ENROLLMENT,
    ),
    Refusal.ENROLL_RATE_LIMITED: _row(
        grpc.StatusCode.UNAVAILABLE,
        "too many enrollment requests from this address: retry later",
        Api.ENROLLMENT,
    ),
    Refusal.REQUEST_DENIED: _row(
        grpc.StatusCode.PERMISSION_DENIED,
        "an operator denied this certificate request",
        Api.ENROLLMENT,
    ),
    # Certificate requests (the CLI's: Control).
    Refusal.NO_ENROLL_REQUEST: _row(
        grpc.StatusCode.NOT_FOUND, "no such certificate request", Api.CONTROL
    ),
    Refusal.ENROLL_REQUEST_STATE: _row(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the certificate request was decided already",
        Api.CONTROL,
    ),
    Refusal.NOT_ENROLLING: _row(
        grpc.StatusCode.FAILED_PRECONDITION,
        "this link does not enroll (it was started without --enroll-mode)",
        Api.CONTROL,
        Api.FLEET,
    ),
    # A node renewing its enrolled certificate (Fleet).
    Refusal.RENEWAL_REFUSED: _row(
        grpc.StatusCode.PERMISSION_DENIED,
        "the link does not renew this certificate: the details say why",
        Api.FLEET,
    ),
    # The link's own state while it judges a caller's certificate (the auth interceptor's).
    Refusal.OCSP_UNAVAILABLE: _row(
        grpc.StatusCode.UNAVAILABLE,
        "the link has no usable OCSP answer for a certificate of this caller's chain (its "
        "responder cannot be reached, answered badly or does not know it): retry later",
        Api.FLEET,
        Api.CONTROL,
    ),
    # The node, for its ClientApps (ClientAppIo).
    Refusal.LINK_UNREACHABLE: _row(
        grpc.StatusCode.UNAVAILABLE, "the node could not reach the link", Api.CLIENTAPPIO
    ),
}


class CallRefused(Exception):
    """A call the server refuses, raised by the code handling it: answered with the row of
    ``refusal`` (its status, its code in the trailer) and ``details`` for people (default:
    the row's meaning)."""

    def __init__(self, refusal: Refusal, details: str = "") -> None:
        self.refusal = refusal
        self.details = details or REFUSALS[refusal].meaning
        super().__init__(self.details)


async def refuse(context: _Context, refusal: Refusal, details: str = "") -> NoReturn:
    """End the call (a grpc.aio servicer context) with ``refusal``: its code in the trailer,
    its row's status, and ``details`` (default: the row's meaning) for people. For an
    interceptor; a handler raises :class:`CallRefused` instead."""
    row = REFUSALS[refusal]
    context.set_trailing_metadata(((REFUSAL_KEY, refusal.value),))
    await context.abort(row.status, details or row.meaning)
    raise AssertionError("abort raises")


def refusal_of(status: grpc.StatusCode, trailers: Sequence[tuple[str, Any]]) -> Refusal | None:
    """The :class:`Refusal` a failed call carries: its code, if the status is the code's."""
    value = next((str(v) for key, v in trailers if key == REFUSAL_KEY), "")
    try:
        refusal = Refusal(value)
    except ValueError:
        return None
    return refusal if REFUSALS[refusal].status is status else None


def refusal_in(error: grpc.RpcError) -> Refusal | None:
    """:func:`refusal_of` a failed call of a grpc client."""
    trailers = getattr(error, "trailing_metadata", lambda: ())() or ()
    return refusal_of(error.code(), trailers)


# --- failures of the link's storage --------------------------------------------------------

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
"""What a failing, full or read-only disk makes a write raise."""


def failures() -> tuple[tuple[type[Exception], grpc.StatusCode, str], ...]:
    """The rows of storage failures: (error class, status, what failed), first match wins;
    OSErrors only of :data:`STORAGE_ERRNOS`. The database's rows are there once this process
    has loaded SQLAlchemy: an error of a library never imported is never raised."""
    rows: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = ()
    if "sqlalchemy.exc" in sys.modules:
        from flwrmtls.dberrors import DatabaseError, OperationalError

        rows = (
            (OperationalError, grpc.StatusCode.UNAVAILABLE, "database"),
            (DatabaseError, grpc.StatusCode.INTERNAL, "database"),
        )
    return (*rows, (OSError, grpc.StatusCode.UNAVAILABLE, "object storage"))


def storage_failure(error: Exception, owner: str = "link") -> tuple[grpc.StatusCode, str] | None:
    """The status and the one line a call that met ``error`` ends with; None if ``error`` is
    not a failure of ``owner``'s storage."""
    if isinstance(error, OSError) and error.errno not in STORAGE_ERRNOS:
        return None
    for kind, code, what in failures():
        if isinstance(error, kind):
            reason = error.strerror if isinstance(error, OSError) else _db_reason(error)
            reason = " ".join(str(reason or "").split()) or type(error).__name__
            return code, f"the {owner}'s {what} failed: {reason}; see the {owner}'s log"
    return None


def _db_reason(error: Exception) -> str:
    from flwrmtls.dberrors import error_reason  # a database error: SQLAlchemy is loaded

    return error_reason(error)


# --- the one place that answers them -------------------------------------------------------


class RefusalInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers what a handler raises, as the catalogue says: a :class:`CallRefused` by its
    row; with ``storage_owner``, a failure of that process's storage by :func:`failures`
    (logged once, with ``caller()`` naming who called). Anything else goes through.

    The link installs it twice on each server: inside the authentication interceptor (so the
    audit trail records the call's real status) and outside it (authentication writes too:
    identity pins)."""

    def __init__(
        self,
        *,
        storage_owner: str | None = None,
        caller: Callable[[], str] = lambda: "",
        refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        """``refused``: told the code of each refusal answered (metrics; None when off)."""
        self._owner = storage_owner
        self._caller = caller
        self._refused = refused
        self._log = logging.getLogger(f"flwrmtls.{storage_owner or 'wire'}")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._guarded(handler, handler_call_details.method)

    async def _answer(self, method: str, error: Exception, context: _Context) -> NoReturn:
        """End the call as the catalogue says, or raise ``error`` again when it lists none."""
        if isinstance(error, CallRefused):
            if self._refused is not None:
                self._refused(error.refusal)
            await refuse(context, error.refusal, error.details)
        failure = storage_failure(error, self._owner) if self._owner else None
        if failure is None:
            raise error
        code, line = failure
        if isinstance(error, OSError):
            name = errno.errorcode.get(error.errno or 0, "OSError")
        else:
            from flwrmtls.dberrors import error_name  # a database error: SQLAlchemy is loaded

            name = error_name(error)
        caller = self._caller()
        self._log.error(
            "%s during %s%s: %s (%s); answered %s",
            line.split(":", 1)[0], method.rsplit("/", 1)[-1], f" by {caller}" if caller else "",
            error.strerror if isinstance(error, OSError) else _db_reason(error), name,
            code.name,
        )  # fmt: skip
        await context.abort(code, line)
        raise AssertionError("abort raises")

    def _guarded(self, handler: Any, method: str) -> Any:
        """The same handler, its refusals and storage failures answered as the table says."""
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        caught = Exception  # what the catalogue lists is answered; anything else is raised again
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: _Context) -> Any:
                try:
                    return await inner(request, context)
                except caught as error:
                    await self._answer(method, error, context)

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
            except caught as error:
                await self._answer(method, error, context)

        make_stream = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make_stream(streamed, deserialize, serialize)
