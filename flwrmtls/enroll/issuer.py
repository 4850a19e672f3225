"""The link's issuing CA for enrollment: a sub-CA whose key signs node certificates.

Rules kept here:

* Loaded once at start-up from ``--enroll-ca-certfile`` (the sub-CA's certificate, then any
  intermediates above it) and ``--enroll-ca-keyfile`` (refused if group or others may use
  the file, as the CA tool refuses its own keys).
* Refused at start-up, in one line naming the flag: a self-signed certificate (a root: keep
  the root offline and give the link an issuing sub-CA, as ``flwrmtls ca init`` makes one);
  a certificate that is not a CA (basicConstraints CA:TRUE) or may not sign certificates
  (keyUsage keyCertSign), or may sign only CAs below it (pathlen 0 allows leaves: fine); a key
  that is not the certificate's; a sub-CA that has expired; a sub-CA that does not chain to
  the link's client CA bundle (the link would refuse every certificate it signs).
* It signs only a :class:`~flwrmtls.enroll.csrcheck.SigningRequest` (what the token allows
  on the requester's key) with the node profile (:mod:`flwrmtls.pki.certprofiles`): CA:FALSE,
  keyUsage digitalSignature (and keyEncipherment for RSA keys), EKU clientAuth, the token's
  Subject and SPIFFE ID, valid from 5 minutes ago for the days asked, never past the sub-CA's
  own expiry (the certificate is cut short then, and renewed before).
* The chain it answers is the new certificate, then the certificates of
  ``--enroll-ca-certfile``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from flwrmtls.enroll.csrcheck import SigningRequest
from flwrmtls.errors import InputError
from flwrmtls.pki.certprofiles import PROFILES, ProfileName
from flwrmtls.pki.certsigning import (
    CLOCK_SKEW_ALLOWANCE,
    pem_bundle,
    public_key_bytes,
    sign_certificate,
)
from flwrmtls.pki.files import read_ca_key_file, read_certificates_file
from flwrmtls.pki.privatekeys import PrivateKey

__all__ = ["EnrollmentIssuer", "Issued"]

_CERT_FLAG = "--enroll-ca-certfile"
_KEY_FLAG = "--enroll-ca-keyfile"


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate
    chain_pem: bytes
    """The new certificate, then the sub-CA's chain."""


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_ca(certificate: x509.Certificate, path: Path) -> None:
    where = f"{_CERT_FLAG} {path}"
    name = certificate.subject.rfc4514_string()
    if certificate.issuer == certificate.subject and _issued_by(certificate, certificate):
        raise InputError(
            f"{where}: {name} is a self-signed root CA: the link never holds a root's key. "
            "Give it an issuing sub-CA signed by your root (`flwrmtls ca init` makes one: "
            "ca/issuing.crt and ca/issuing.key), and keep the root offline"
        )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InputError(f"{where}: {name} is not a CA certificate (basicConstraints CA:TRUE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        may_sign = usage.key_cert_sign
    except x509.ExtensionNotFound:
        may_sign = True
    if not may_sign:
        raise InputError(f"{where}: {name} may not sign certificates (keyUsage keyCertSign)")


def _chains_to(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> bool:
    """Whether ``chain`` (the sub-CA first) leads to one of ``anchors``, link by link."""
    for index, certificate in enumerate(chain):
        if any(public_key_bytes(certificate.public_key()) == public_key_bytes(a.public_key())
               and certificate.subject == a.subject for a in anchors):  # fmt: skip
            return True
        if any(_issued_by(certificate, anchor) for anchor in anchors):
            return True
        if index + 1 < len(chain) and not _issued_by(certificate, chain[index + 1]):
            return False
    return False


class EnrollmentIssuer:
    def __init__(
        self, chain: Sequence[x509.Certificate], key: PrivateKey, *, source: Path | None = None
    ) -> None:
        self._chain = tuple(chain)
        self._key = key
        self.source = source

    @property
    def certificate(self) -> x509.Certificate:
        return self._chain[0]

    @classmethod
    def load(
        cls,
        certfile: Path,
        keyfile: Path,
        *,
        client_cas: Sequence[x509.Certificate],
        now: datetime,
    ) -> EnrollmentIssuer:
        """The sub-CA of these files, checked as the module says; InputError otherwise."""
        chain = read_certificates_file(certfile, f"{_CERT_FLAG} certificate")
        key = read_ca_key_file(keyfile, f"{_KEY_FLAG} key")
        ca = chain[0]
        _check_ca(ca, certfile)
        if public_key_bytes(key.public_key()) != public_key_bytes(ca.public_key()):
            raise InputError(
                f"{_KEY_FLAG} {keyfile} is not the key of the certificate in {_CERT_FLAG} "
                f"{certfile}: give the sub-CA's own key"
            )
        if now > ca.not_valid_after_utc:
            raise InputError(
                f"{_CERT_FLAG} {certfile}: the sub-CA expired on "
                f"{ca.not_valid_after_utc:%Y-%m-%d}: the link cannot issue with it"
            )
        if not _chains_to(chain, client_cas):
            raise InputError(
                f"{_CERT_FLAG} {certfile}: {ca.subject.rfc4514_string()} does not chain to a CA "
                "of the link's client CA bundle (--ssl-ca-certfile, --ssl-client-ca-certfile): "
                "the link would refuse every certificate it issues"
            )
        return cls(chain, key, source=certfile)

    def sign(self, request: SigningRequest, now: datetime) -> Issued:
        """The node certificate ``request`` allows, and its chain."""
        issuer = self.certificate
        not_after = min(now + timedelta(days=request.days), issuer.not_valid_after_utc)
        certificate = sign_certificate(
            PROFILES[ProfileName.NODE],
            subject=request.binding.subject(),
            public_key=request.public_key,
            signing_key=self._key,
            issuer_certificate=issuer,
            not_before=now - CLOCK_SKEW_ALLOWANCE,
            not_after=not_after,
            subject_alternative_names=request.binding.subject_alternative_names(),
        )
        return Issued(certificate, pem_bundle(certificate, *self._chain))

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether this sub-CA signed ``certificate`` (a node renewing its own)."""
        return certificate.issuer == self.certificate.subject and _issued_by(
            certificate, self.certificate
        )
