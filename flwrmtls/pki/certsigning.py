"""Building certificates from values: Subjects, SANs and the signature.

Rules kept here:

* Subjects are built in DER order: a node is ``O, OU, CN``, a CLI user ``O, CN, role``, a
  server and the CAs just ``CN``. Empty optional attributes are left out.
* The ``role`` attribute (X.520, OID 2.5.4.72) is ``operator`` or ``user``, as a UTF8String.
* A server SAN holds every DNS name (ASCII, lower-cased, ``*.`` wildcard allowed) and IP address
  it is given, at least one of them. A node SAN is a single URI: a valid SPIFFE ID.
* Serials are ``x509.random_serial_number()`` (159 random bits); the hash is SHA-256.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from flwrmtls.auth.identity import ROLE_OID, AmbiguousIdentityError, validate_spiffe_id
from flwrmtls.errors import InputError
from flwrmtls.pki.certprofiles import CertificateProfile, build_extensions
from flwrmtls.pki.holders import SameIdentity
from flwrmtls.pki.privatekeys import SIGNATURE_HASH, PrivateKey, PublicKey

__all__ = [
    "CLI_ROLES",
    "CLOCK_SKEW_ALLOWANCE",
    "IssuedCertificate",
    "as_utc",
    "cli_subject",
    "common_name_subject",
    "node_subject",
    "pem_bundle",
    "public_key_bytes",
    "server_subject_alternative_names",
    "sign_certificate",
    "spiffe_subject_alternative_names",
    "validity_window",
]

CLI_ROLES = ("operator", "user")
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
_DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # fmt: skip
_MAX_DNS_NAME = 253


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf the CA issued, and where its chain and key were written."""

    certificate: x509.Certificate
    chain_path: Path
    """``<name>.pem``: the leaf, then the issuing CA."""
    key_path: Path
    """``<name>.key``: the leaf's private key, mode 0600."""
    serial: int
    takes_over: tuple[SameIdentity, ...] = ()
    """Unrevoked certificates of this CA with the same identity, as found before writing
    (:mod:`~flwrmtls.pki.holders`): to the link, this one is the same holder as they are."""


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def validity_window(
    now: datetime,
    *,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
    issuer_not_after: datetime,
) -> tuple[datetime, datetime]:
    """``(not_before, not_after)`` of a leaf: from now - 5 minutes to now + ``days`` unless
    overridden; InputError if it ends before it starts or outlives its issuer."""
    if days < 1:
        raise InputError(f"validity of {days} days is too short; pass --days 1 or more")
    if not_after is None and days > (issuer_not_after - now).days + 1:
        raise InputError(
            f"--days {days}: the certificate would outlive the issuing CA, which expires on "
            f"{issuer_not_after:%Y-%m-%d}; pass a smaller --days or create a new CA"
        )
    start = now - CLOCK_SKEW_ALLOWANCE if not_before is None else as_utc(not_before)
    end = now + timedelta(days=days) if not_after is None else as_utc(not_after)
    if end <= start:
        raise InputError(f"certificate would expire ({end}) before it is valid ({start})")
    if end > issuer_not_after:
        raise InputError(
            f"certificate would outlive the issuing CA, which expires on "
            f"{issuer_not_after:%Y-%m-%d}; pass a smaller --days or create a new CA"
        )
    return start, end


def _subject(attributes: Sequence[tuple[x509.ObjectIdentifier, str | None]]) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value])
    except ValueError as error:  # e.g. a CN longer than 64 characters
        raise InputError(f"invalid certificate Subject: {error}") from None


def common_name_subject(common_name: str) -> x509.Name:
    """``CN=<common_name>``: CAs and servers."""
    if not common_name.strip():
        raise InputError("a certificate's common name may not be empty; pass a name")
    return _subject([(NameOID.COMMON_NAME, common_name)])


def node_subject(
    common_name: str, organization: str | None, organizational_unit: str | None
) -> x509.Name:
    """``O=…, OU=…, CN=…`` (RFC 4514 renders it ``CN=…,OU=…,O=…``).

    The OU may not be a CLI role: a link started with ``--cli-role-source ou`` would take
    such a node certificate for a CLI certificate.
    """
    if organizational_unit in CLI_ROLES:
        raise InputError(
            f"--ou {organizational_unit!r} is a CLI role name: a link reading roles from the "
            "OU would treat this node as a CLI user; choose another OU"
        )
    return _subject(
        [
            (NameOID.ORGANIZATION_NAME, organization),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit),
            (NameOID.COMMON_NAME, common_name),
        ]
    )


def cli_subject(common_name: str, role: str, organization: str | None) -> x509.Name:
    """``O=…, CN=…, role=…`` with ``role`` one of :data:`CLI_ROLES`."""
    if role not in CLI_ROLES:
        raise InputError(f"--role {role!r} is unknown; use one of: {', '.join(CLI_ROLES)}")
    return _subject(
        [
            (NameOID.ORGANIZATION_NAME, organization),
            (NameOID.COMMON_NAME, common_name),
            (ROLE_OID, role),
        ]
    )


def server_subject_alternative_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    """The SAN entries of a server; InputError for a bad name or address, or none at all."""
    names: list[x509.GeneralName] = []
    for dns_name in dns_names:
        if not dns_name.isascii() or len(dns_name) > _MAX_DNS_NAME or not _DNS_NAME.match(dns_name):
            raise InputError(
                f"--dns {dns_name!r} is not a DNS name; use letters, digits, '-' and '.' "
                "(IDNA A-labels for non-ASCII names)"
            )
        names.append(x509.DNSName(dns_name.lower()))
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise InputError(f"--ip {address!r} is not an IPv4 or IPv6 address") from None
    if not names:
        raise InputError("a server certificate needs at least one --dns name or --ip address")
    return names


def spiffe_subject_alternative_names(spiffe_id: str | None) -> list[x509.GeneralName]:
    """No SAN without a SPIFFE ID; else one URI SAN, validated as the link validates it."""
    if spiffe_id is None:
        return []
    try:
        return [x509.UniformResourceIdentifier(validate_spiffe_id(spiffe_id))]
    except AmbiguousIdentityError as error:
        raise InputError(f"--spiffe-id: {error}") from None


def sign_certificate(
    profile: CertificateProfile,
    *,
    subject: x509.Name,
    public_key: PublicKey,
    signing_key: PrivateKey,
    issuer_certificate: x509.Certificate | None,
    not_before: datetime,
    not_after: datetime,
    subject_alternative_names: Sequence[x509.GeneralName] = (),
    extended_key_usages: Sequence[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    """Build and sign one certificate of ``profile`` (self-signed when no issuer is given)."""
    issuer_name = subject if issuer_certificate is None else issuer_certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in build_extensions(
        profile,
        subject_public_key=public_key,
        issuer_certificate=issuer_certificate,
        subject_alternative_names=subject_alternative_names,
        extended_key_usages=extended_key_usages,
    ):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, SIGNATURE_HASH)


def pem_bundle(*certificates: x509.Certificate) -> bytes:
    """The certificates as concatenated PEM blocks, in the order given."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def public_key_bytes(key: CertificatePublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo of a public key, for comparing keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
