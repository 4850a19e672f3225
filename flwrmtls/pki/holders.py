"""Certificates in a CA directory that a new certificate would share its identity with.

Rules kept here:

* A link names a holder by its Subject (or, with ``--identity-source spiffe``, its single URI
  SAN), never by key or serial: a new certificate with the Subject or SPIFFE ID of one already
  issued *is* that node (or CLI user) to the link, with its node id, runs and history.
* That is how rotation works, so issuing one is allowed; but when it was meant as a new node,
  it is a takeover. So ``ca issue`` reports each certificate it takes over from: issued by
  this issuing CA, found as ``*.pem`` in the CA directory (or the output directory), not
  revoked in the CA's record, not expired, with the same Subject or the same URI SAN.
* Files that are not certificates, or certificates of other CAs, are skipped silently: the CA
  directory also holds ``ca.crt``, ``crl.pem`` and whatever the operator keeps there.
* :func:`same_identity` is pure; :func:`certificates_in` reads the directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

__all__ = ["SameIdentity", "certificates_in", "same_identity"]


@dataclass(frozen=True, slots=True)
class SameIdentity:
    """A certificate already issued that a new one takes the identity of."""

    path: Path
    serial: int
    not_after: datetime
    shared: str
    """What they share: ``Subject CN=...`` or ``SPIFFE ID spiffe://...``."""


def _uris(names: Iterable[x509.GeneralName]) -> set[str]:
    return {name.value for name in names if isinstance(name, x509.UniformResourceIdentifier)}


def _san_uris(certificate: x509.Certificate) -> set[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return _uris(extension.value)


def certificates_in(directories: Iterable[Path]) -> list[tuple[Path, x509.Certificate]]:
    """The first certificate of every readable ``*.pem`` in ``directories``, by path."""
    found: dict[Path, x509.Certificate] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.pem")):
            try:
                found.setdefault(path.absolute(), x509.load_pem_x509_certificate(path.read_bytes()))
            except (OSError, ValueError):
                continue
    return sorted(found.items())


def same_identity(
    existing: Iterable[tuple[Path, x509.Certificate]],
    *,
    issuer: x509.Certificate,
    subject: x509.Name,
    subject_alternative_names: Sequence[x509.GeneralName],
    revoked_serials: frozenset[int],
    now: datetime,
) -> list[SameIdentity]:
    """The certificates of ``existing`` a new one (``subject``, its SANs) takes over from."""
    new_uris = _uris(subject_alternative_names)
    holders = []
    for path, certificate in existing:
        if certificate.serial_number in revoked_serials or certificate.not_valid_after_utc <= now:
            continue
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if certificate.subject == subject:
            shared = f"Subject {subject.rfc4514_string()}"
        elif new_uris & _san_uris(certificate):
            shared = f"SPIFFE ID {sorted(new_uris & _san_uris(certificate))[0]}"
        else:
            continue
        holders.append(
            SameIdentity(path, certificate.serial_number, certificate.not_valid_after_utc, shared)
        )
    return holders
