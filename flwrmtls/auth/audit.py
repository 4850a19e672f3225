"""The audit trail's record, and which calls the interceptor records.

Rules kept here (applied by :class:`flwrmtls.auth.interceptor.AuthInterceptor`):

* Every Control call is recorded once it ends: who (the principal's identity and auth
  method), the method, the outcome (``ok`` or the gRPC status code's name, e.g.
  ``PERMISSION_DENIED``, with the status details) and the peer address.
* Every node admission is recorded: a Fleet ``ActivateNode`` call, with its outcome.
* Every refusal by the interceptor (authentication or policy) is recorded with the refusal
  reason as the outcome (``revoked``, ``not-permitted``, ...), once per (certificate or peer,
  reason) and interval, as the refusal log logs it; the entry counts the refusals left out
  since the previous one. A peer hammering any API with a refused certificate costs a counter,
  not a write per call, and cannot push the real history out of the bounded trail.
* Nothing else: the Fleet's other calls (heartbeats, pulls, pushes, objects) never write.

The interceptor hands each record to a sink (``audit=``), on the link
:meth:`flwrmtls.state.audittable.AuditTable.record`. A sink must be quick and must not raise;
the interceptor logs and drops a record whose sink fails rather than failing the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "OUTCOME_OK",
    "AuditRecord",
    "AuditSink",
    "records_every_call",
    "records_every_refusal",
]

OUTCOME_OK = "ok"

_CONTROL_PREFIX = "/flwrmtls.proto.Control/"
_ADMISSION = "/flwrmtls.proto.Fleet/ActivateNode"


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


AuditSink = Callable[[AuditRecord], None]


def records_every_call(method: str) -> bool:
    """Control calls and node admissions: each is recorded, whatever its outcome."""
    return method.startswith(_CONTROL_PREFIX) or method == _ADMISSION


def records_every_refusal(method: str) -> bool:
    """No method: a refusal is recorded once per (certificate or peer, reason) and interval,
    with a count of those left out, so that a caller the link refuses (a node certificate on
    the Control API, a revoked CLI certificate) cannot flood the bounded trail and push the
    real history out of it."""
    return False
