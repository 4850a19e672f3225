"""The allowed range of every numeric field of every request and of every answer a node
receives: two tables, checked on arrival.

Rules:

* Every numeric field of every request message a flwrmtls server accepts has a row in
  :data:`FIELD_BOUNDS` (``tests/wire/test_bounds.py`` proves it, from the generated
  descriptors). A field of a message type the table does not list as :data:`NESTED` is not
  looked at: that is app data (the records inside a message's ``content``, a run's config),
  where a NaN metric is legitimate.
* A value outside its range is refused with ``INVALID_ARGUMENT`` and one line naming the
  field, the value and the range (:func:`request_problem`), before the handler runs. Doubles
  must be finite: NaN and infinities are outside every range.
* Refused, never clamped: durations (a long poll's ``wait_seconds`` above
  :data:`MAX_WAIT_SECONDS`, a ``ttl`` above :data:`MAX_TTL_SECONDS`), ids and cursors (they
  must fit SQLite's signed 64-bit INTEGER), object sizes and offsets. A caller asking for a
  number the link cannot honour learns it at once instead of having it guessed.
* Clamped by the servicer, so accepted here whatever they are: counts that ask for "up to N"
  (``max_messages``, ``limit``): asking for more than the link gives returns fewer. And
  ``GetNodes.minimum``, which only says how long to wait (bounded by ``wait_seconds``).
* What a node receives from the link (every Fleet response, and each chunk of an object it
  pulls) is checked as strictly, against :data:`RESPONSE_BOUNDS` (:func:`response_problem`,
  applied in one place: :class:`flwrmtls.fleet.client.FleetClient`). An answer outside its
  range is never used, clamped or replaced by a default: the node gives up with one line
  naming the field (a link that sends a NaN heartbeat interval is broken or not a compatible
  version, and guessing an interval would make it count the node offline, or flood it).
  ``tests/wire/test_response_bounds.py`` proves every numeric field of every Fleet response
  has a row.
* The heartbeat interval is one range for both sides: the link's ``--heartbeat-interval``
  flag and what a node accepts (:data:`HEARTBEAT_SECONDS`), so a link a flag can configure
  never sends an interval its nodes refuse.
* Pure: values in, a message out. :mod:`flwrmtls.wire.validate` applies it to gRPC calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message as ProtoMessage

__all__ = [
    "DEFAULT_TTL",
    "FIELD_BOUNDS",
    "HEARTBEAT_SECONDS",
    "LONG_POLL_SECONDS",
    "MAX_TTL_SECONDS",
    "MAX_WAIT_SECONDS",
    "NESTED",
    "RESPONSE_BOUNDS",
    "Range",
    "long_poll_seconds",
    "request_problem",
    "response_problem",
]

MAX_WAIT_SECONDS = 30.0
"""The longest a long poll (PullMessages, PullReplies, GetNodes, PullMessage) may wait."""
LONG_POLL_SECONDS = 20.0
"""How long flwrmtls's own clients ask each long poll to wait (the node's PullMessages, the
ServerApp's PullReplies and GetNodes, the ClientApp's PullMessage): under
:data:`MAX_WAIT_SECONDS`, and under the link's delivery lease
(:data:`flwrmtls.fleet.servicer.DELIVERY_LEASE`)."""
MAX_TTL_SECONDS = 365 * 86400.0
"""The longest a message may live."""
DEFAULT_TTL = 3600.0
"""Seconds a message lives when it names no ttl: the one definition, which the link reads
here (so it needs neither the app's modules nor numpy to know it) and the Grid through
:mod:`flwrmtls.app.message`."""
_MAX_OBJECT_BYTES = 8 << 30
"""The largest object a receiver accepts (:data:`flwrmtls.objects.transfer.MAX_OBJECT_BYTES`)."""
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Range:
    """Allowed values: ``low <= value <= high``, and finite."""

    low: float
    high: float
    text: str
    """The range as the refusal names it."""

    def allows(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high


NESTED = Range(0, 0, "a message whose own fields are checked")
"""Marks a message-typed field: each message in it is checked by its own type's rows."""

_WAIT = Range(0, MAX_WAIT_SECONDS, f"a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
_TTL = Range(0, MAX_TTL_SECONDS, f"a number of seconds from 0 to {MAX_TTL_SECONDS:g}")
_TIME = Range(0, 253402300799, "seconds since the epoch, from 0 to the year 9999")
_ID = Range(0, _INT64_MAX, f"an id from 0 to {_INT64_MAX}")
_COUNT = Range(0, (1 << 32) - 1, "a count (the link gives at most its own maximum)")
_ERROR_CODE = Range(-(1 << 63), _INT64_MAX, "a 64-bit error code")
_OBJECT_BYTES = Range(0, _MAX_OBJECT_BYTES, f"a size in bytes from 0 to {_MAX_OBJECT_BYTES}")
_TOKEN_TTL = Range(0, 7 * 86400, "a number of seconds from 0 (an hour) to 604800 (7 days)")
_CERTIFICATE_DAYS = Range(0, 3650, "a number of days from 0 (the link's) to 3650")
HEARTBEAT_SECONDS = Range(1, 86400, "a number of seconds from 1 to 86400")
"""Seconds between a node's heartbeats: the link's ``--heartbeat-interval``, and what a node
accepts from the link (more often than once a second is load without use; 0 or NaN would be
a loop without pause, and a day is the longest the link's flag allows)."""

_P = "flwrmtls.proto."

_MESSAGE: Mapping[str, Range] = {
    "run_id": _ID, "src_node_id": _ID, "dst_node_id": _ID, "created_at": _TIME, "ttl": _TTL,
    "error": NESTED,
}  # fmt: skip
_ERROR: Mapping[str, Range] = {"code": _ERROR_CODE}
_CHUNK: Mapping[str, Range] = {"total_size": _OBJECT_BYTES, "offset": _OBJECT_BYTES}

FIELD_BOUNDS: Mapping[str, Mapping[str, Range]] = {
    # Shared by Fleet, ServerAppIo and ClientAppIo.
    f"{_P}Message": _MESSAGE,
    f"{_P}Error": _ERROR,
    f"{_P}ObjectChunk": _CHUNK,
    # Fleet
    f"{_P}PullMessagesRequest": {
        "max_messages": _COUNT, "wait_seconds": _WAIT, "active_run_ids": _ID,
    },
    f"{_P}PushMessagesRequest": {"messages": NESTED},
    f"{_P}GetRunRequest": {"run_id": _ID},
    f"{_P}PushLogsRequest": {"run_id": _ID},
    f"{_P}RenewCertificateRequest": {"days": _CERTIFICATE_DAYS},
    # Control
    f"{_P}UnregisterNodeRequest": {"node_id": _ID},
    f"{_P}ReadmitNodeRequest": {"node_id": _ID},
    f"{_P}ListAuditRequest": {"limit": _COUNT},
    f"{_P}ListRunsRequest": {"run_id": _ID},
    f"{_P}StreamLogsRequest": {"run_id": _ID, "after_seq": _ID},
    f"{_P}StopRunRequest": {"run_id": _ID},
    f"{_P}CreateEnrollTokenRequest": {"ttl_seconds": _TOKEN_TTL, "identity": NESTED},
    f"{_P}EnrollIdentity": {},
    f"{_P}DecideEnrollRequestRequest": {"request_id": _ID},
    # Enrollment
    f"{_P}RequestCertificateRequest": {"days": _CERTIFICATE_DAYS},
    f"{_P}CollectCertificateRequest": {"request_id": _ID},
    # ServerAppIo
    f"{_P}GetNodesRequest": {"minimum": _COUNT, "wait_seconds": _WAIT},
    f"{_P}PushAppMessagesRequest": {"messages": NESTED},
    f"{_P}PullRepliesRequest": {"wait_seconds": _WAIT, "after": _ID},
    # ClientAppIo
    f"{_P}PullAppMessageRequest": {"wait_seconds": _WAIT},
    f"{_P}PushReplyRequest": {"reply": NESTED},
}  # fmt: skip

RESPONSE_BOUNDS: Mapping[str, Mapping[str, Range]] = {
    # What a node receives from the link's Fleet API.
    f"{_P}ActivateNodeResponse": {"node_id": _ID, "heartbeat_interval": HEARTBEAT_SECONDS},
    f"{_P}HeartbeatResponse": {"heartbeat_interval": HEARTBEAT_SECONDS},
    f"{_P}PullMessagesResponse": {"messages": NESTED, "ended_run_ids": _ID},
    f"{_P}Message": _MESSAGE,
    f"{_P}Error": _ERROR,
    f"{_P}GetRunResponse": {"run_id": _ID},
    f"{_P}ObjectChunk": _CHUNK,
    f"{_P}PushObjectResponse": {"size": _OBJECT_BYTES},
}  # fmt: skip


def _values(message: ProtoMessage, name: str) -> Iterator[Any]:
    field = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if field.is_repeated:
        yield from value
    elif field.message_type is None or message.HasField(name):
        yield value


def _problem(message: ProtoMessage, table: Mapping[str, Mapping[str, Range]]) -> str | None:
    rows = table.get(message.DESCRIPTOR.full_name)
    if rows is None:
        return None
    for name, allowed in rows.items():
        for value in _values(message, name):
            if allowed is NESTED:
                problem = _problem(value, table)
                if problem is not None:
                    return problem
            elif not allowed.allows(value):
                return f"{message.DESCRIPTOR.name}.{name} must be {allowed.text}; got {value!r}"
    return None


def request_problem(message: ProtoMessage) -> str | None:
    """None if every checked field of ``message`` is in range, else one line naming the
    first that is not (``PullMessagesRequest.wait_seconds``), its value and its range."""
    return _problem(message, FIELD_BOUNDS)


def response_problem(message: ProtoMessage) -> str | None:
    """:func:`request_problem` for what a node receives from the link (:data:`RESPONSE_BOUNDS`):
    ``HeartbeatResponse.heartbeat_interval must be ...; got nan``."""
    return _problem(message, RESPONSE_BOUNDS)


def long_poll_seconds(requested: float) -> float:
    """How long a long poll waits: ``requested`` within 0..MAX_WAIT_SECONDS, 0 when it is not
    a number (defence in depth: :func:`request_problem` refuses such requests first)."""
    if requested > MAX_WAIT_SECONDS:
        return MAX_WAIT_SECONDS
    return requested if requested > 0 else 0.0
