"""The allowed range of every numeric field of every request: one table, checked on arrival.

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
* Pure: values in, a message out. :mod:`flwrmtls.wire.validate` applies it to gRPC calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message as ProtoMessage

__all__ = [
    "FIELD_BOUNDS",
    "MAX_TTL_SECONDS",
    "MAX_WAIT_SECONDS",
    "NESTED",
    "Range",
    "long_poll_seconds",
    "request_problem",
]

MAX_WAIT_SECONDS = 30.0
"""The longest a long poll (PullMessages, PullReplies, GetNodes, PullMessage) may wait."""
MAX_TTL_SECONDS = 365 * 86400.0
"""The longest a message may live."""
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

_P = "flwrmtls.proto."

FIELD_BOUNDS: Mapping[str, Mapping[str, Range]] = {
    # Shared by Fleet, ServerAppIo and ClientAppIo.
    f"{_P}Message": {
        "run_id": _ID, "src_node_id": _ID, "dst_node_id": _ID, "created_at": _TIME,
        "ttl": _TTL, "error": NESTED,
    },
    f"{_P}Error": {"code": _ERROR_CODE},
    f"{_P}ObjectChunk": {"total_size": _OBJECT_BYTES, "offset": _OBJECT_BYTES},
    # Fleet
    f"{_P}PullMessagesRequest": {
        "max_messages": _COUNT, "wait_seconds": _WAIT, "active_run_ids": _ID,
    },
    f"{_P}PushMessagesRequest": {"messages": NESTED},
    f"{_P}GetRunRequest": {"run_id": _ID},
    # Control
    f"{_P}UnregisterNodeRequest": {"node_id": _ID},
    f"{_P}ReadmitNodeRequest": {"node_id": _ID},
    f"{_P}ListAuditRequest": {"limit": _COUNT},
    f"{_P}ListRunsRequest": {"run_id": _ID},
    f"{_P}StreamLogsRequest": {"run_id": _ID, "after_seq": _ID},
    f"{_P}StopRunRequest": {"run_id": _ID},
    # ServerAppIo
    f"{_P}GetNodesRequest": {"minimum": _COUNT, "wait_seconds": _WAIT},
    f"{_P}PushAppMessagesRequest": {"messages": NESTED},
    f"{_P}PullRepliesRequest": {"wait_seconds": _WAIT, "after": _ID},
    # ClientAppIo
    f"{_P}PullAppMessageRequest": {"wait_seconds": _WAIT},
    f"{_P}PushReplyRequest": {"reply": NESTED},
}  # fmt: skip


def _values(message: ProtoMessage, name: str) -> Iterator[Any]:
    field = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if field.is_repeated:
        yield from value
    elif field.message_type is None or message.HasField(name):
        yield value


def request_problem(message: ProtoMessage) -> str | None:
    """None if every checked field of ``message`` is in range, else one line naming the
    first that is not (``PullMessagesRequest.wait_seconds``), its value and its range."""
    rows = FIELD_BOUNDS.get(message.DESCRIPTOR.full_name)
    if rows is None:
        return None
    for name, allowed in rows.items():
        for value in _values(message, name):
            if allowed is NESTED:
                problem = request_problem(value)
                if problem is not None:
                    return problem
            elif not allowed.allows(value):
                return f"{message.DESCRIPTOR.name}.{name} must be {allowed.text}; got {value!r}"
    return None


def long_poll_seconds(requested: float) -> float:
    """How long a long poll waits: ``requested`` within 0..MAX_WAIT_SECONDS, 0 when it is not
    a number (defence in depth: :func:`request_problem` refuses such requests first)."""
    if requested > MAX_WAIT_SECONDS:
        return MAX_WAIT_SECONDS
    return requested if requested > 0 else 0.0
