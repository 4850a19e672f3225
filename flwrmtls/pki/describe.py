"""What a certificate says, and who the link would take its holder to be.

``describe_certificate`` is pure: it reads the certificate's parsed fields and asks
:func:`flwrmtls.auth.identity.identity_from_certificate` for the identity, exactly as the link
does. A certificate the link would refuse as ambiguous is described with the reason instead of
an identity.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.identity import (
    ROLE_OID,
    AmbiguousIdentityError,
    IdentitySource,
    identity_from_certificate,
)
from flwrmtls.pki.privatekeys import describe_public_key

__all__ = ["CertificateDescription", "describe_certificate"]

_ATTRIBUTE_NAMES = {ROLE_OID: "role"}
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


@dataclass(frozen=True, slots=True)
class CertificateDescription:
    """The fields ``flwrmtls ca show`` prints."""

    subject: str
    """RFC 4514, with the X.520 role attribute written ``role``."""
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    key_type: str
    is_ca: bool
    extended_key_usages: tuple[str, ...]
    subject_alternative_names: tuple[str, ...]
    """``DNS:name``, ``IP:addr``, ``URI:uri``, ``email:addr``."""
    sha256_fingerprint: str
    public_key_sha256: str
    """``sha256:<hex>`` of the SubjectPublicKeyInfo: what a site's ``--ca-cert-hash`` pins."""
    identity_source: IdentitySource
    identity: str | None
    """What the link would call the holder; None when ``identity_error`` says why not."""
    kind: str | None
    """``ca``, ``server``, ``node``, ``operator`` or ``user``."""
    node_id: int | None
    identity_error: str | None
    issued_by_ca: bool | None
    """Whether the issuing CA passed to :func:`describe_certificate` signed it (None: not asked)."""
    use: str = ""
    """What the certificate is for, and what it cannot be used for, in one sentence."""

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:#x}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the serial as ``0x…`` hex, dates as ISO 8601."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial_hex,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "key_type": self.key_type,
            "is_ca": self.is_ca,
            "extended_key_usages": list(self.extended_key_usages),
            "subject_alternative_names": list(self.subject_alternative_names),
            "sha256_fingerprint": self.sha256_fingerprint,
            "public_key_sha256": self.public_key_sha256,
            "identity_source": self.identity_source.value,
            "identity": self.identity,
            "kind": self.kind,
            "node_id": self.node_id,
            "identity_error": self.identity_error,
            "issued_by_ca": self.issued_by_ca,
            "use": self.use,
        }


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{name.value.rfc4514_string()}"
    return f"{type(name).__name__}:{name.value!r}"


def _extended_key_usages(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in usages)


def _subject_alternative_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_general_name(name) for name in names)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _directly_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


_SERVER = "serverAuth"
_CLIENT = "clientAuth"
_ANY = "anyExtendedKeyUsage"


def _use(is_ca: bool, usages: tuple[str, ...], kind: str | None) -> tuple[str | None, str]:
    """(kind, what the certificate is for) from its CA flag, its EKUs and its identity kind."""
    if is_ca:
        return "ca", "a CA: it signs certificates; a link, node or CLI cannot present it"
    server = not usages or _SERVER in usages or _ANY in usages
    client = not usages or _CLIENT in usages or _ANY in usages
    if server and not client:
        return "server", (
            "the link's certificate (--ssl-certfile); it cannot be a node's or the CLI's "
            "(no clientAuth)"
        )
    target = {
        "node": "a node's certificate (--ssl-client-certfile)",
        "operator": "an operator's CLI certificate (client-certificate in config.toml)",
        "user": "a user's CLI certificate (client-certificate in config.toml)",
    }.get(kind or "", "a client certificate")
    if not server:
        return kind, f"{target}; it cannot be the link's (no serverAuth)"
    return kind, target


def describe_certificate(
    certificate: x509.Certificate,
    source: IdentitySource = IdentitySource.SUBJECT,
    *,
    issuing_ca: x509.Certificate | None = None,
) -> CertificateDescription:
    """Describe ``certificate`` and the identity a link using ``source`` would give it; with
    ``issuing_ca``, also whether that CA signed it (signature and issuer name only)."""
    identity_value: str | None = None
    kind: str | None = None
    node_id: int | None = None
    identity_error: str | None = None
    try:
        identity = identity_from_certificate(certificate, source)
    except AmbiguousIdentityError as error:
        identity_error = str(error)
    else:
        identity_value, kind, node_id = identity.value, identity.kind.value, identity.node_id
    is_ca = _is_ca(certificate)
    usages = _extended_key_usages(certificate)
    kind, use = _use(is_ca, usages, kind)
    if kind in ("ca", "server"):
        node_id = None  # no holder the link would name
    return CertificateDescription(
        subject=certificate.subject.rfc4514_string(_ATTRIBUTE_NAMES),
        issuer=certificate.issuer.rfc4514_string(_ATTRIBUTE_NAMES),
        serial=certificate.serial_number,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        key_type=describe_public_key(certificate.public_key()),
        is_ca=is_ca,
        extended_key_usages=usages,
        subject_alternative_names=_subject_alternative_names(certificate),
        sha256_fingerprint="sha256:" + certificate.fingerprint(hashes.SHA256()).hex(),
        public_key_sha256="sha256:"
        + hashlib.sha256(
            certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest(),
        identity_source=source,
        identity=identity_value,
        kind=kind,
        node_id=node_id,
        identity_error=identity_error,
        issued_by_ca=None if issuing_ca is None else _directly_issued_by(certificate, issuing_ca),
        use=use,
    )
