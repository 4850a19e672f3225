"""A node renews its enrolled certificate, authenticated by that certificate: no token.

Rules kept here:

* Only over mTLS on the Fleet API (``RenewCertificate``), so the auth interceptor has judged
  the current certificate as it does every call: a node revoked (by CRL or OCSP), expired or
  unregistered is refused before this runs.
* Only a certificate this link's enrollment sub-CA issued (:meth:`EnrollmentIssuer.issued`):
  a certificate from another CA is renewed by that CA.
* The new certificate carries the current one's identity exactly: its Subject, which must be
  one the CA builds for nodes (O, OU, CN), and its SPIFFE ID. The CSR is judged as an
  enrollment CSR against that identity (:func:`~flwrmtls.enroll.csrcheck.check_request`: its
  own key, nothing beyond a node certificate, at most ``--enroll-certificate-days``).
* Only the newest certificate of an identity renews: one that renewed already (its serial
  is an ``old_serial`` of the identity's renewals) is refused. So revoking an enrolled
  node's current certificate is not undone by a copy of an older one, still unexpired,
  renewing itself into a fresh certificate (a stolen key's copy, say).
* At most one renewal per identity per :data:`MIN_INTERVAL`: a node cannot make the link
  sign without bound. A renewal too soon is refused before anything is signed; two racing
  (at one link or at two replicas) are settled when the renewal is kept: the check and the
  row are one transaction, and the loser's certificate is never answered.
* Each renewal is kept (:meth:`~flwrmtls.state.enrolltable.EnrollTable.renewed`: identity,
  old and new serials, key, when, from where); the Fleet call is in the audit trail.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from flwrmtls.enroll.csrcheck import CsrRefused, check_request
from flwrmtls.enroll.issuer import EnrollmentIssuer, Issued
from flwrmtls.enroll.tokens import Binding
from flwrmtls.errors import InputError

__all__ = ["MIN_INTERVAL", "RenewalRefused", "RenewalStore", "Renewals", "binding_of_certificate"]

MIN_INTERVAL = timedelta(minutes=10)


class RenewalRefused(Exception):
    """A renewal the link does not make; ``str()`` says why, in one line."""


class RenewalStore(Protocol):
    def last_renewal(self, identity: str) -> datetime | None: ...

    def successor(self, identity: str, serial: str) -> tuple[str, datetime] | None: ...

    def renewed(
        self,
        identity: str,
        now: datetime,
        *,
        since: datetime,
        old_serial: str,
        new_serial: str,
        key_fingerprint: str,
        peer: str,
    ) -> datetime | None: ...


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = [str(attribute.value) for attribute in name.get_attributes_for_oid(oid)]
    return values[0] if len(values) == 1 else ""


def binding_of_certificate(certificate: x509.Certificate) -> Binding:
    """The identity ``certificate`` carries, as a token would bind it; RenewalRefused when
    its Subject is not one the CA builds for nodes."""
    subject = certificate.subject
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [str(name.value) for name in names]
    except x509.ExtensionNotFound:
        uris = []
    try:
        binding = Binding(
            common_name=_one(subject, NameOID.COMMON_NAME),
            organization=_one(subject, NameOID.ORGANIZATION_NAME),
            organizational_unit=_one(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
            spiffe_id=uris[0] if len(uris) == 1 else "",
        )
    except InputError as error:
        raise RenewalRefused(f"this certificate's identity cannot be renewed: {error}") from None
    if binding.subject() != subject or binding.subject_alternative_names() != [
        x509.UniformResourceIdentifier(uri) for uri in uris
    ]:
        raise RenewalRefused(
            f"this certificate's identity ({subject.rfc4514_string()}) is not one enrollment "
            "issues: renew it with the CA that issued it"
        )
    return binding


class Renewals:
    def __init__(self, store: RenewalStore, issuer: EnrollmentIssuer, *, max_days: int) -> None:
        self._store = store
        self._issuer = issuer
        self._max_days = max_days

    def renew(
        self, current: x509.Certificate, csr_der: bytes, now: datetime, *, days: int, peer: str
    ) -> Issued:
        """The new certificate for the holder of ``current`` (see the module)."""
        if not self._issuer.issued(current):
            raise RenewalRefused(
                f"this certificate was issued by {current.issuer.rfc4514_string()}, not by the "
                "link's enrollment CA: renew it with the CA that issued it"
            )
        binding = binding_of_certificate(current)
        identity = binding.describe()
        last = self._store.last_renewal(identity)  # refused before any signing
        if last is not None and now - last < MIN_INTERVAL:
            raise _too_soon(identity, last)
        serial = f"{current.serial_number:x}"
        successor = self._store.successor(identity, serial)
        if successor is not None:
            new_serial, when = successor
            raise RenewalRefused(
                f"this certificate of {identity} (serial {serial}) was renewed already, at "
                f"{when:%Y-%m-%d %H:%M:%S} UTC, into serial {new_serial}: only the newest "
                "certificate renews. If this node never got that one, it keeps calling with "
                "this certificate until it expires; ask the operator for a new join token"
            )
        try:
            signing = check_request(csr_der, binding, days=days, max_days=self._max_days)
        except CsrRefused as error:
            raise RenewalRefused(str(error)) from None
        issued = self._issuer.sign(signing, now)
        last = self._store.renewed(
            identity, now, since=now - MIN_INTERVAL, old_serial=serial,
            new_serial=f"{issued.certificate.serial_number:x}",
            key_fingerprint=signing.key_fingerprint, peer=peer,
        )  # fmt: skip
        if last is not None:  # another renewal of this identity was kept meanwhile
            raise _too_soon(identity, last)
        return issued


def _too_soon(identity: str, last: datetime) -> RenewalRefused:
    return RenewalRefused(
        f"{identity} renewed its certificate at {last:%Y-%m-%d %H:%M:%S} UTC: once per "
        f"{MIN_INTERVAL.seconds // 60} minutes at most"
    )
