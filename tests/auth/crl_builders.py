"""CRLs and certificates built with cryptography's builders, for revocation tests.

Rules kept here:

* Every CRL is signed by the real key of a CA made by the project's CA tool (``TestPki``: its
  issuing CA, or its root) or by :func:`make_ca`; nothing is mocked.
* :func:`make_crl` writes exactly the extensions asked for: CRL number, delta indicator,
  IssuingDistributionPoint, extra (possibly critical, unknown) extensions, entry reasons.
* Leaves made here carry a CRLDistributionPoints extension when asked, so partition tests have
  certificates in named partitions, and an AuthorityInformationAccess naming OCSP responders
  when asked; they are written as chain + key files a node loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from flwrmtls.testing.pki import TestPki

__all__ = [
    "Ca",
    "idp",
    "issuing_ca",
    "make_ca",
    "make_crl",
    "make_leaf",
    "root_ca",
    "uri",
    "write_crl",
]

SigningKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Ca:
    certificate: x509.Certificate
    key: SigningKey
    chain_after: tuple[x509.Certificate, ...] = ()
    """What a leaf under this CA sends after itself (this CA when it is an intermediate)."""


def _load_key(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def issuing_ca(pki: TestPki) -> Ca:
    certificate = pki.ca.issuing_certificate
    return Ca(certificate, _load_key(pki.ca.files.issuing_key), (certificate,))


def root_ca(pki: TestPki) -> Ca:
    return Ca(pki.ca.root_certificate, _load_key(pki.ca.files.root_key))


def uri(text: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(text)


def idp(
    *names: str,
    only_user: bool = False,
    only_ca: bool = False,
    indirect: bool = False,
    only_some_reasons: frozenset[x509.ReasonFlags] | None = None,
) -> x509.IssuingDistributionPoint:
    return x509.IssuingDistributionPoint(
        full_name=[uri(n) for n in names] or None,
        relative_name=None,
        only_contains_user_certs=only_user,
        only_contains_ca_certs=only_ca,
        only_some_reasons=only_some_reasons,
        indirect_crl=indirect,
        only_contains_attribute_certs=False,
    )


def _key_usage(*, cert_sign: bool, crl_sign: bool, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(name: str, *, crl_sign: bool = True, now: datetime | None = None) -> Ca:
    """A self-signed root CA ``CN=<name>`` with an EC key; ``crl_sign=False`` leaves cRLSign
    out of its keyUsage."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(cert_sign=True, crl_sign=crl_sign, digital_signature=False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Ca(certificate, key)


def make_leaf(
    ca: Ca,
    directory: Path,
    name: str,
    *,
    distribution_points: Sequence[str] = (),
    ocsp: Sequence[str] = (),
    now: datetime | None = None,
) -> tuple[Path, Path, x509.Certificate]:
    """A node certificate ``CN=<name>, O=Hospital P`` signed by ``ca``, with a
    CRLDistributionPoints of ``distribution_points`` (URIs) if any, and an
    AuthorityInformationAccess naming ``ocsp`` responders (URIs) if any: (chain, key, leaf)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital P"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(cert_sign=False, crl_sign=False, digital_signature=True), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if distribution_points:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[uri(point)], relative_name=None, reasons=None, crl_issuer=None
                    )
                    for point in distribution_points
                ]
            ),
            critical=False,
        )
    if ocsp:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, uri(u)) for u in ocsp]
            ),
            critical=False,
        )
    leaf = builder.sign(ca.key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    chain_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    chain_path.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *ca.chain_after))
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return chain_path, key_path, leaf


Entry = tuple[int, x509.ReasonFlags | None]


def make_crl(
    ca: Ca,
    *,
    number: int | None,
    revoked: Iterable[Entry] = (),
    base: int | None = None,
    scope: x509.IssuingDistributionPoint | None = None,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    entry_extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    """A CRL of ``ca``: number ``number``, a delta on ``base`` when given, revoking
    ``(serial, reason)`` entries (reason None: no CRLReason)."""
    this_update = this_update or datetime.now(UTC) - timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + timedelta(days=7))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if base is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(base), critical=True)
    if scope is not None:
        builder = builder.add_extension(scope, critical=True)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    entry_extensions = list(entry_extensions)
    for serial, reason in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update - timedelta(minutes=1))
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        for extension, critical in entry_extensions:
            entry = entry.add_extension(extension, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, hashes.SHA256())


def write_crl(path: Path, *crls: x509.CertificateRevocationList) -> Path:
    """Write ``crls`` (PEM, one after the other) atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls))
    partial.replace(path)
    return path
