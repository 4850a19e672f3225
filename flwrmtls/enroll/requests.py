"""A certificate request, from its checks to its certificate: one path for both modes.

Rules kept here:

* A request passed :func:`~flwrmtls.enroll.csrcheck.check_request` when it was submitted
  (else it was never stored); it is checked again when it is signed (:func:`issue`), against
  the token's binding and the link's ``--enroll-certificate-days`` then, so an approval
  never signs what the link would refuse now.
* ``--enroll-mode sign`` issues at once, as the link (``decided_by`` says so); ``approve``
  waits for an operator's ``flwrmtls enroll approve`` (or ``deny``). Either way the request
  is decided once (:meth:`~flwrmtls.state.enrolltable.EnrollTable.decide`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from flwrmtls.enroll.csrcheck import check_request
from flwrmtls.enroll.issuer import EnrollmentIssuer, Issued
from flwrmtls.enroll.tokens import binding_of
from flwrmtls.state.enrolltable import RequestRecord, RequestState, TokenRecord

__all__ = ["LINK_DECIDES", "RequestStore", "issue"]

LINK_DECIDES = "the link (--enroll-mode sign)"
"""Who decided a request the link signed at once."""


class RequestStore(Protocol):
    """Where the link keeps tokens and requests (:mod:`flwrmtls.state.enrolltable`)."""

    def get(self, token_id: str) -> TokenRecord | None: ...

    def decide(
        self,
        request_id: int,
        state: RequestState,
        now: datetime,
        *,
        by: str,
        reason: str = "",
        chain_pem: bytes = b"",
        serial: str = "",
    ) -> bool: ...


def issue(
    store: RequestStore,
    issuer: EnrollmentIssuer,
    request: RequestRecord,
    now: datetime,
    *,
    by: str,
    max_days: int,
) -> Issued | None:
    """Sign ``request`` and keep its chain; None when it was decided meanwhile. Raises
    :class:`~flwrmtls.enroll.csrcheck.CsrRefused` when the link would not sign it now."""
    token = store.get(request.token_id)
    assert token is not None, "a request is stored with its token"
    signing = check_request(
        request.csr_der, binding_of(token), days=request.days, max_days=max_days
    )
    issued = issuer.sign(signing, now)
    serial = f"{issued.certificate.serial_number:x}"
    if not store.decide(
        request.request_id, RequestState.ISSUED, now, by=by, chain_pem=issued.chain_pem,
        serial=serial,
    ):  # fmt: skip
        return None
    return issued
