"""What each kind of certificate the CA issues carries: one table, one row per profile.

Rules kept here:

* Root CA: basicConstraints ``CA:TRUE, pathlen:1`` (critical); keyUsage ``keyCertSign,
  cRLSign`` (critical); SKI. Self-signed, so no AKI.
* Issuing CA: basicConstraints ``CA:TRUE, pathlen:0`` (critical); keyUsage ``keyCertSign,
  cRLSign`` (critical); SKI; AKI pointing at the root.
* Server: basicConstraints ``CA:FALSE`` (critical); keyUsage ``digitalSignature`` (plus
  ``keyEncipherment`` for RSA keys, critical); EKU ``serverAuth``; a SAN with at least one DNS
  name or IP address; SKI; AKI.
* Node: as a server, but EKU ``clientAuth``; the Subject names it (CN, optional O and OU); a SAN
  only when a SPIFFE ID is given (a single URI SAN).
* CLI: as a node; the Subject carries the X.520 ``role`` attribute (``operator`` or ``user``).
* Cross CA: a successor root's Subject and key signed by the old root (``flwrmtls ca
  cross-sign``); extensions as the root's, plus an AKI pointing at the old root.
* Every leaf is signed by the issuing CA; its AKI is the issuing CA's SKI.

A test may override a leaf's extended key usages (to build a serverAuth-only node certificate);
an empty override leaves the EKU extension out altogether.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.pki.privatekeys import PublicKey

__all__ = [
    "PROFILES",
    "CertificateProfile",
    "ProfileName",
    "build_extensions",
]


class ProfileName(enum.StrEnum):
    ROOT_CA = "root-ca"
    CROSS_CA = "cross-ca"
    ISSUING_CA = "issuing-ca"
    SERVER = "server"
    NODE = "node"
    CLI = "cli"


@dataclass(frozen=True, slots=True)
class CertificateProfile:
    """The extensions one kind of certificate carries."""

    name: ProfileName
    is_ca: bool
    path_length: int | None
    """basicConstraints pathlen for a CA (None for leaves)."""
    extended_key_usages: tuple[x509.ObjectIdentifier, ...]
    """EKU purposes; empty means no EKU extension (CAs)."""
    subject_alternative_name_required: bool
    """The certificate must name at least one DNS name or IP address (servers)."""
    self_signed: bool
    """No issuer: no AuthorityKeyIdentifier."""


PROFILES: Mapping[ProfileName, CertificateProfile] = MappingProxyType(
    {
        ProfileName.ROOT_CA: CertificateProfile(
            name=ProfileName.ROOT_CA,
            is_ca=True,
            path_length=1,
            extended_key_usages=(),
            subject_alternative_name_required=False,
            self_signed=True,
        ),
        ProfileName.CROSS_CA: CertificateProfile(
            name=ProfileName.CROSS_CA,
            is_ca=True,
            path_length=1,
            extended_key_usages=(),
            subject_alternative_name_required=False,
            self_signed=False,
        ),
        ProfileName.ISSUING_CA: CertificateProfile(
            name=ProfileName.ISSUING_CA,
            is_ca=True,
            path_length=0,
            extended_key_usages=(),
            subject_alternative_name_required=False,
            self_signed=False,
        ),
        ProfileName.SERVER: CertificateProfile(
            name=ProfileName.SERVER,
            is_ca=False,
            path_length=None,
            extended_key_usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
            subject_alternative_name_required=True,
            self_signed=False,
        ),
        ProfileName.NODE: CertificateProfile(
            name=ProfileName.NODE,
            is_ca=False,
            path_length=None,
            extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            subject_alternative_name_required=False,
            self_signed=False,
        ),
        ProfileName.CLI: CertificateProfile(
            name=ProfileName.CLI,
            is_ca=False,
            path_length=None,
            extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            subject_alternative_name_required=False,
            self_signed=False,
        ),
    }
)


def _key_usage(profile: CertificateProfile, subject_public_key: PublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not profile.is_ca,
        content_commitment=False,
        key_encipherment=not profile.is_ca and isinstance(subject_public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=profile.is_ca,
        crl_sign=profile.is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def build_extensions(
    profile: CertificateProfile,
    *,
    subject_public_key: PublicKey,
    issuer_certificate: x509.Certificate | None,
    subject_alternative_names: Sequence[x509.GeneralName] = (),
    extended_key_usages: Sequence[x509.ObjectIdentifier] | None = None,
) -> list[tuple[x509.ExtensionType, bool]]:
    """The (extension, critical) pairs a certificate of ``profile`` carries.

    ``issuer_certificate`` is None only for a self-signed profile. ``extended_key_usages``
    replaces the profile's EKU list when given (empty: no EKU extension).
    """
    if profile.self_signed != (issuer_certificate is None):
        raise ValueError(f"profile {profile.name} needs issuer_certificate iff not self-signed")
    if profile.subject_alternative_name_required and not subject_alternative_names:
        raise ValueError(f"profile {profile.name} needs at least one subject alternative name")
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length), True),
        (_key_usage(profile, subject_public_key), True),
    ]
    usages = profile.extended_key_usages if extended_key_usages is None else extended_key_usages
    if usages:
        extensions.append((x509.ExtendedKeyUsage(list(usages)), False))
    if subject_alternative_names:
        extensions.append((x509.SubjectAlternativeName(list(subject_alternative_names)), False))
    extensions.append((x509.SubjectKeyIdentifier.from_public_key(subject_public_key), False))
    if issuer_certificate is not None:
        issuer_key_id = issuer_certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        extensions.append(
            (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id), False)
        )
    return extensions
