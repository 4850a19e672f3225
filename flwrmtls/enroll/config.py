"""How the link enrolls new sites: the operator's choices, checked at start-up.

``--enroll-mode sign|approve`` serves the Enrollment API (:mod:`flwrmtls.enroll.servicer`) on
its own listener and signs, with the sub-CA of ``--enroll-ca-certfile``/``--enroll-ca-keyfile``
(:mod:`flwrmtls.enroll.issuer`), what a valid join token allows: at once (``sign``), or once an
operator approved the request (``approve``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flwrmtls.enroll.issuer import EnrollmentIssuer

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CERTIFICATE_DAYS",
    "DEFAULT_PER_MINUTE",
    "MAX_RECEIVE_BYTES",
    "EnrollMode",
    "EnrollmentConfig",
]

DEFAULT_ADDRESS = "0.0.0.0:9095"
DEFAULT_CERTIFICATE_DAYS = 30
DEFAULT_PER_MINUTE = 10
MAX_RECEIVE_BYTES = 16 << 10
"""The largest request the enrollment listener reads: a token and a CSR (about 2 KB for an
8192-bit RSA key) fit many times over; anything larger is grpc's RESOURCE_EXHAUSTED."""


class EnrollMode(enum.StrEnum):
    SIGN = "sign"
    """The link signs what a valid token allows, at once."""
    APPROVE = "approve"
    """A request waits for an operator's ``flwrmtls enroll approve`` (or ``deny``)."""


@dataclass(frozen=True, slots=True)
class EnrollmentConfig:
    mode: EnrollMode
    issuer: EnrollmentIssuer
    address: str = DEFAULT_ADDRESS
    certificate_days: int = DEFAULT_CERTIFICATE_DAYS
    per_minute: int = DEFAULT_PER_MINUTE
    """Enrollment calls one peer address may make a minute (and at once)."""
