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
* Except the repeat: a certificate that renewed already, asking with a CSR that verifies and
  carries exactly the key it renewed for (the SHA-256 of the SubjectPublicKeyInfo kept with
  the renewal), is answered the chain answered then, byte for byte: nothing is signed and no
  renewal is kept, whenever it asks (the interval does not apply). A node whose answer was
  lost retries with its previous certificate and the same new key (it keeps that key until
  the renewal is installed: :mod:`flwrmtls.node.renewal`), so it is not locked out; a copy
  of the previous certificate without that key's private half gets nothing new.
* At most one renewal per identity per :data:`MIN_INTERVAL`: a node cannot make the link
  sign without bound. A renewal too soon is refused before anything is signed; two racing
  (at one link or at two replicas) are settled when the renewal is kept: the check and the
  row are one transaction, and the loser's certificate is never answered.
* Each renewal is kept (:meth:`~flwrmtls.state.enrolltable.EnrollTable.renewed`: identity,
  old and new serials, key, the chain answered, when, from where); the Fleet call is in the
  audit trail (a repeat with the detail ``repeat: ...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from flwrmtls.enroll.csrcheck import CsrRefused, check_request
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.enroll.tokens import Binding
from flwrmtls.errors import InputError
from flwrmtls.state.enrolltable import Successor

__all__ = [
    "MIN_INTERVAL",
    "RenewalRefused",
    "RenewalStore",
    "Renewals",
    "Renewed",
    "binding_of_certificate",
]

MIN_INTERVAL = timedelta(minutes=10)


class RenewalRefused(Exception):
    """A renewal the link does not make; ``str()`` says why, in one line."""


class RenewalStore(Protocol):
    def last_renewal(self, identity: str) -> datetime | None: ...

    def successor(self, identity: str, serial: str) -> Successor | None: ...

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
        chain_pem: bytes,
    ) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Renewed:
    """A renewal's answer: the new certificate and its chain (PEM)."""

    certificate: x509.Certificate
    chain_pem: bytes
    repeat_of: datetime | None = None
    """Set when this answers again a renewal kept then (for the same key): nothing new."""


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
    ) -> Renewed:
        """The new certificate for the holder of ``current`` (see the module)."""
        if not self._issuer.issued(current):
            raise RenewalRefused(
                f"this certificate was issued by {current.issuer.rfc4514_string()}, not by the "
                "link's enrollment CA: renew it with the CA that issued it"
            )
        binding = binding_of_certificate(current)
        identity = binding.describe()
        serial = f"{current.serial_number:x}"
        successor = self._store.successor(identity, serial)
        if successor is not None:
            repeat = self._repeat(successor, csr_der, binding)
            if repeat is not None:  # the answer the node lost, again: nothing new
                return repeat
        last = self._store.last_renewal(identity)  # refused before any signing
        if last is not None and now - last < MIN_INTERVAL:
            raise _too_soon(identity, last)
        if successor is not None:
            raise RenewalRefused(
                f"this certificate of {identity} (serial {serial}) was renewed already, at "
                f"{successor.renewed_at:%Y-%m-%d %H:%M:%S} UTC, into serial "
                f"{successor.serial}: only the newest certificate renews, and this one is "
                "answered again only for the key it renewed for"
            )
        try:
            signing = check_request(csr_der, binding, days=days, max_days=self._max_days)
        except CsrRefused as error:
            raise RenewalRefused(str(error)) from None
        issued = self._issuer.sign(signing, now)
        last = self._store.renewed(
            identity, now, since=now - MIN_INTERVAL, old_serial=serial,
            new_serial=f"{issued.certificate.serial_number:x}",
            key_fingerprint=signing.key_fingerprint, peer=peer, chain_pem=issued.chain_pem,
        )  # fmt: skip
        if last is not None:  # another renewal of this identity was kept meanwhile
            raise _too_soon(identity, last)
        return Renewed(issued.certificate, issued.chain_pem)

    def _repeat(self, successor: Successor, csr_der: bytes, binding: Binding) -> Renewed | None:
        """The chain ``successor`` answered, when the CSR verifies and carries its key."""
        if not successor.chain_pem:
            return None
        try:
            signing = check_request(csr_der, binding, days=0, max_days=self._max_days)
        except CsrRefused:
            return None  # judged (and refused) as any other renewal
        if signing.key_fingerprint != successor.key_fingerprint:
            return None
        certificate = x509.load_pem_x509_certificate(successor.chain_pem)
        return Renewed(certificate, successor.chain_pem, repeat_of=successor.renewed_at)


def _too_soon(identity: str, last: datetime) -> RenewalRefused:
    return RenewalRefused(
        f"{identity} renewed its certificate at {last:%Y-%m-%d %H:%M:%S} UTC: once per "
        f"{MIN_INTERVAL.seconds // 60} minutes at most"
    )
