"""Why the link refused a node's request, as a code both sides read: one table.

Rules:

* A refusal carries a :class:`Refusal` code in the ``flwrmtls-refusal`` trailer
  (:data:`~flwrmtls.wire.metadata.REFUSAL_KEY`, the trailer that also names why credentials
  were refused), beside its gRPC status and a sentence for people. A servicer refuses by
  raising :class:`CallRefused`; one place answers it (the link's interceptor,
  :mod:`flwrmtls.link.storagefailure`), or :func:`refuse` where a handler answers itself, so a
  code always comes with the status its row names.
* A client reads the cause from the code, never from the status alone (:func:`refusal_of`):
  a NOT_FOUND may mean an unknown session, a run that has ended or a missing object, and a
  RESOURCE_EXHAUSTED from grpc itself (a message over its size limit) is not a storage quota.
  A code whose status does not match its row, or a status without a code, is no
  :class:`Refusal`: the client treats it as an error it cannot act on.
* Only the two session codes end a node's session; what each code makes the node do is the
  node's table (:data:`flwrmtls.fleet.client.NODE_ERRORS`).
* Codes are stable strings: a new one is added, none is renamed. Credential refusals
  (:class:`~flwrmtls.auth.authenticator.RefusalReason`) use the same trailer with codes of
  their own; the two sets never share a value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from flwrmtls.wire.metadata import REFUSAL_KEY

__all__ = [
    "REFUSALS",
    "CallRefused",
    "Refusal",
    "RefusalRow",
    "answer_refused",
    "refusal_of",
    "refuse",
]


class Refusal(enum.StrEnum):
    UNKNOWN_SESSION = "unknown-session"
    SESSION_SUPERSEDED = "session-superseded"
    RUN_ENDED = "run-ended"
    RUN_NOT_FOR_NODE = "run-not-for-node"
    NO_OBJECT = "no-object"
    OVER_QUOTA = "over-quota"
    INVALID_MESSAGE = "invalid-message"
    FOREIGN_MESSAGE = "foreign-message"


@dataclass(frozen=True, slots=True)
class RefusalRow:
    status: grpc.StatusCode
    meaning: str
    """What happened, for people (and the default message)."""


REFUSALS: Mapping[Refusal, RefusalRow] = {
    Refusal.UNKNOWN_SESSION: RefusalRow(
        grpc.StatusCode.NOT_FOUND, "unknown session: activate the node again"
    ),
    Refusal.SESSION_SUPERSEDED: RefusalRow(
        grpc.StatusCode.FAILED_PRECONDITION,
        "session superseded: a newer connection activated the same identity",
    ),
    Refusal.RUN_ENDED: RefusalRow(
        grpc.StatusCode.NOT_FOUND, "the run is not active: it ended, or never existed"
    ),
    Refusal.RUN_NOT_FOR_NODE: RefusalRow(
        grpc.StatusCode.NOT_FOUND, "the run has no work for this node"
    ),
    Refusal.NO_OBJECT: RefusalRow(
        grpc.StatusCode.NOT_FOUND, "no such object (or not one this caller may read)"
    ),
    Refusal.OVER_QUOTA: RefusalRow(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "over a storage bound of the link"
    ),
    Refusal.INVALID_MESSAGE: RefusalRow(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message the link does not route (another run's, an unknown node, an id empty or "
        "used before)",
    ),
    Refusal.FOREIGN_MESSAGE: RefusalRow(
        grpc.StatusCode.PERMISSION_DENIED,
        "a reply that is not this node's to send (another source node, or an answer to a "
        "message not sent to it)",
    ),
}


class CallRefused(Exception):
    """A call the link refuses, raised by the code handling it: answered with the row of
    ``refusal`` (its status, its code in the trailer) and ``details`` for people (default:
    the row's meaning)."""

    def __init__(self, refusal: Refusal, details: str = "") -> None:
        self.refusal = refusal
        self.details = details or REFUSALS[refusal].meaning
        super().__init__(self.details)


async def refuse(context: Any, refusal: Refusal, details: str = "") -> NoReturn:
    """End the call (a grpc.aio servicer context) with ``refusal``: its code in the trailer,
    its row's status, and ``details`` (default: the row's meaning) for people."""
    row = REFUSALS[refusal]
    context.set_trailing_metadata(((REFUSAL_KEY, refusal.value),))
    await context.abort(row.status, details or row.meaning)
    raise AssertionError("abort raises")


async def answer_refused(context: Any, refused: CallRefused) -> NoReturn:
    """End the call with what a :class:`CallRefused` says."""
    await refuse(context, refused.refusal, refused.details)


def refusal_of(status: grpc.StatusCode, trailers: Sequence[tuple[str, Any]]) -> Refusal | None:
    """The :class:`Refusal` a failed call carries: its code, if the status is the code's."""
    value = next((str(v) for key, v in trailers if key == REFUSAL_KEY), "")
    try:
        refusal = Refusal(value)
    except ValueError:
        return None
    return refusal if REFUSALS[refusal].status is status else None
