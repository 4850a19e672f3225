"""Join tokens and certificate requests on the Control API: proto messages to and from them.

Rules:

* An identity from a request is checked as the CA tool checks a node's (:class:`Binding`): an
  empty or overlong common name, an OU that is a CLI role, a malformed SPIFFE ID are refused
  (``invalid-request``) before anything is stored.
* The token's secret leaves the link once, in the answer to the call that created it; a
  listing carries each token's id, identity and state, never a secret or its hash.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509

from flwrmtls.enroll.tokens import DEFAULT_TTL, Binding, binding_of, state_of
from flwrmtls.errors import InputError
from flwrmtls.pki.privatekeys import describe_public_key
from flwrmtls.proto import control_pb2
from flwrmtls.state.enrolltable import RequestRecord, TokenRecord
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["MAX_REASON", "denial_reason", "request_message", "requested_binding", "token_message",
           "ttl_of"]  # fmt: skip

MAX_REASON = 200
"""Characters of a denial's reason kept (it is shown to the site)."""


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


def denial_reason(text: str) -> str:
    """A denial's reason as kept: one line, at most :data:`MAX_REASON` characters."""
    line = " ".join(text.split())
    if len(line) > MAX_REASON:
        raise CallRefused(
            Refusal.INVALID_REQUEST, f"a denial's reason is at most {MAX_REASON} characters"
        )
    return line


def _key_type(csr_der: bytes) -> str:
    try:
        return describe_public_key(x509.load_der_x509_csr(csr_der).public_key())
    except ValueError:
        return "unreadable"


def request_message(record: RequestRecord, token: TokenRecord | None) -> control_pb2.EnrollRequest:
    """A request as ``flwrmtls enroll ls`` shows it: the identity its token allows, the key."""
    binding = binding_of(token) if token is not None else None
    return control_pb2.EnrollRequest(
        request_id=record.request_id,
        token_id=record.token_id,
        identity=_identity(binding) if binding is not None else None,
        subject=binding.subject().rfc4514_string() if binding is not None else "",
        key_fingerprint=record.key_fingerprint,
        key_type=_key_type(record.csr_der),
        peer=record.peer,
        state=record.state.value,
        created_at=record.created_at.timestamp(),
        decided_at=record.decided_at.timestamp() if record.decided_at else 0.0,
        decided_by=record.decided_by,
        reason=record.reason,
        serial=record.serial,
        days=record.days,
    )
