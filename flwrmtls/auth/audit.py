"""The audit trail's record, and which calls the interceptor records.

Rules kept here (applied by :class:`flwrmtls.auth.interceptor.AuthInterceptor`):

* Every Control call is recorded once it ends: who (the principal's identity and auth
  method), the method, the outcome (``ok`` or the gRPC status code's name, e.g.
  ``PERMISSION_DENIED``, with the status details) and the peer address.
* Every node admission is recorded: a Fleet ``ActivateNode`` call, with its outcome; so is
  every renewal of an enrolled certificate (``RenewCertificate``).
* Every refusal by the interceptor (authentication or policy) is recorded with the refusal
  reason as the outcome (``revoked``, ``not-permitted``, ...), once per (certificate or peer,
  reason) and interval, and at most 10 per peer address and interval, as the refusal log logs
  it; the entry counts the refusals left out since the previous one. A peer hammering any API
  with a refused certificate (or a fresh key per call) costs a counter, not a write per call,
  and cannot push the real history out of the bounded trail.
* Nothing else: the Fleet's other calls (heartbeats, pulls, pushes, objects) never write.
* Each record belongs to one retention class (:func:`retention_of`), and each class is
  bounded on its own (:mod:`flwrmtls.state.audittable`), so no volume of one kind of call can
  push another kind out of the trail:

  ==============  ================================================================  ==========
  class           what                                                              kept
  ==============  ================================================================  ==========
  ``change``      Control calls that changed state: a run started or stopped, keys  1,000,000
                  registered, a node unregistered or readmitted, a join token made
                  or revoked, a certificate request decided (each needs a run or an
                  operator's action)
  ``admission``   node admissions (Fleet ``ActivateNode``)                          100,000
  ``read``        read-only Control calls: ListNodes, ListRuns, StreamLogs,         100,000
                  ListAudit, ListEnrollTokens, ListEnrollRequests, whatever their
                  outcome
  ``refusal``     refusals by the interceptor, Control calls that failed or         100,000
                  changed nothing (a StopRun of a run that had ended), and
                  Enrollment calls without a join token's secret
  ``enrollment``  Enrollment calls by a caller that proved a join token's secret:  100,000
                  certificate requests, refused token descriptions and collections
                  (recorded by :mod:`flwrmtls.enroll.servicer`); renewals (Fleet
                  RenewCertificate)
  ==============  ================================================================  ==========

  A handler says its call changed nothing with :func:`unchanged`, and adds a line to a
  successful call's entry with :func:`note` (a renewal answered again: ``repeat: ...``).

The interceptor hands each record to a sink (``audit=``), on the link
:meth:`flwrmtls.state.audittable.AuditTable.record`. A sink must be quick and must not raise;
the interceptor logs and drops a record whose sink fails rather than failing the call.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "OUTCOME_OK",
    "AuditRecord",
    "AuditSink",
    "Retention",
    "call_changed",
    "note",
    "noted",
    "records_every_call",
    "records_every_refusal",
    "retention_of",
    "unchanged",
]

OUTCOME_OK = "ok"

_CONTROL_PREFIX = "/flwrmtls.proto.Control/"
_ADMISSION = "/flwrmtls.proto.Fleet/ActivateNode"
_RENEWAL = "/flwrmtls.proto.Fleet/RenewCertificate"
_READ_ONLY = frozenset(
    f"{_CONTROL_PREFIX}{name}"
    for name in (
        "ListNodes",
        "ListRuns",
        "StreamLogs",
        "ListAudit",
        "ListEnrollTokens",
        "ListEnrollRequests",
    )
)


class Retention(enum.StrEnum):
    """Which bound of the trail an entry counts against (see the module's table)."""

    CHANGE = "change"
    ADMISSION = "admission"
    READ = "read"
    REFUSAL = "refusal"
    ENROLLMENT = "enrollment"


_changed: contextvars.ContextVar[bool] = contextvars.ContextVar("flwrmtls_changed", default=True)


def unchanged() -> None:
    """Handlers: this call changed nothing (it is audited in the ``refusal`` class)."""
    _changed.set(False)


_note: contextvars.ContextVar[str] = contextvars.ContextVar("flwrmtls_note", default="")


def note(detail: str) -> None:
    """Handlers: the detail of this call's entry if it ends well (one line, no secrets)."""
    _note.set(detail)


def noted() -> str:
    """The interceptor, as a call ends well: what its handler noted (empty: nothing)."""
    return _note.get()


def call_changed() -> contextvars.Token[bool]:
    """The interceptor, as a handler starts: assume the call changes state until told not,
    and that it notes nothing."""
    _note.set("")
    return _changed.set(True)


def retention_of(method: str, outcome: str, *, refused: bool = False) -> Retention:
    """The class of a recorded call (``refused``: refused by the interceptor itself)."""
    if refused:
        return Retention.REFUSAL
    if method in _READ_ONLY:
        return Retention.READ
    if method == _ADMISSION:
        return Retention.ADMISSION
    if method == _RENEWAL:
        return Retention.ENROLLMENT
    if outcome != OUTCOME_OK or not _changed.get():
        return Retention.REFUSAL
    return Retention.CHANGE


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited event, as the interceptor saw it."""

    timestamp: float
    """Seconds since the epoch, when the call ended or was refused."""
    identity: str
    """The principal's identity; for a refused certificate the Subject it presented (not
    trusted, see ``outcome``), for a refused EC key its fingerprint, else the peer's host."""
    auth_method: str
    """``certificate``, ``key``, ``token`` or ``none``."""
    method: str
    """The full RPC name, e.g. ``/flwrmtls.proto.Control/StartRun``."""
    outcome: str
    """:data:`OUTCOME_OK`, a gRPC status code name, or a refusal reason."""
    detail: str = ""
    """The status details or refusal message."""
    peer: str = ""
    """grpc's peer string, e.g. ``ipv4:127.0.0.1:50412``."""
    retention: Retention = Retention.REFUSAL
    """Which bound of the trail the entry counts against."""


AuditSink = Callable[[AuditRecord], None]


def records_every_call(method: str) -> bool:
    """Control calls, node admissions and certificate renewals: each is recorded, whatever
    its outcome."""
    return method.startswith(_CONTROL_PREFIX) or method in (_ADMISSION, _RENEWAL)


def records_every_refusal(method: str) -> bool:
    """No method: a refusal is recorded once per (certificate or peer, reason) and interval,
    with a count of those left out, so that a caller the link refuses (a node certificate on
    the Control API, a revoked CLI certificate) cannot flood the bounded trail and push the
    real history out of it."""
    return False
