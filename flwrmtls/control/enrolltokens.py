"""Join tokens on the Control API: proto messages to and from the token values.

Rules:

* An identity from a request is checked as the CA tool checks a node's (:class:`Binding`): an
  empty or overlong common name, an OU that is a CLI role, a malformed SPIFFE ID are refused
  (``invalid-request``) before anything is stored.
* The token's secret leaves the link once, in the answer to the call that created it; a
  listing carries each token's id, identity and state, never a secret or its hash.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flwrmtls.enroll.tokens import DEFAULT_TTL, Binding, TokenRecord, binding_of, state_of
from flwrmtls.errors import InputError
from flwrmtls.proto import control_pb2
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["requested_binding", "token_message", "ttl_of"]


def requested_binding(identity: control_pb2.EnrollIdentity) -> Binding:
    """The binding a request names; ``invalid-request`` when the CA would not issue it."""
    try:
        return Binding(
            common_name=identity.common_name,
            organization=identity.organization,
            organizational_unit=identity.organizational_unit,
            spiffe_id=identity.spiffe_id,
        )
    except InputError as error:
        raise CallRefused(Refusal.INVALID_REQUEST, str(error)) from None


def ttl_of(seconds: float) -> timedelta:
    """The lifetime a request asks for (0: :data:`DEFAULT_TTL`; the range is checked on
    arrival, :mod:`flwrmtls.wire.bounds`)."""
    return timedelta(seconds=seconds) if seconds else DEFAULT_TTL


def _identity(binding: Binding) -> control_pb2.EnrollIdentity:
    return control_pb2.EnrollIdentity(
        common_name=binding.common_name,
        organization=binding.organization,
        organizational_unit=binding.organizational_unit,
        spiffe_id=binding.spiffe_id,
    )


def token_message(record: TokenRecord, now: datetime) -> control_pb2.EnrollToken:
    """A token as listings show it: no secret."""
    return control_pb2.EnrollToken(
        token_id=record.token_id,
        identity=_identity(binding_of(record)),
        subject=binding_of(record).subject().rfc4514_string(),
        created_at=record.created_at.timestamp(),
        expires_at=record.expires_at.timestamp(),
        created_by=record.created_by,
        state=state_of(record, now).value,
        used_at=record.used_at.timestamp() if record.used_at else 0.0,
        revoked_at=record.revoked_at.timestamp() if record.revoked_at else 0.0,
    )
