"""Who a verified certificate is: its identity, its role, and the node id derived from it.

Rules kept here:

* An identity is built from the certificate's parsed fields (cryptography's typed
  attributes), never from the DN strings grpcio reports: those render unicode, escaping and
  multi-valued RDNs differently and would give one certificate two identities.
* By default the identity is the Subject. A link told to use SPIFFE takes the certificate's
  single URI SAN, which must be a valid SPIFFE ID.
* Ambiguous certificates are refused: two CNs, two role attributes, an empty Subject, and in
  SPIFFE mode zero or several URI SANs or a malformed SPIFFE ID.
* ``node_id`` is a deterministic function of the identity alone, so a reissued certificate
  (same Subject, new key and serial) is the same node.
* The role of a CLI certificate is, by default (:attr:`RoleSource.ROLE`), the Subject's
  ``role`` attribute (X.520, OID 2.5.4.72), ``operator`` or ``user``; a certificate without
  one is a node certificate. For certificates from other CAs, :attr:`RoleSource.OU` takes the
  role from the Subject's single OU instead: ``operator`` or ``user`` (exactly these, lowercase)
  make a CLI certificate, any other OU or none a node certificate, two or more OUs are refused
  as ambiguous. In OU mode the ``role`` attribute is ignored, so node certificates must not
  carry those two OU values: the CA that issues them decides who operates the federation.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "ROLE_OID",
    "AmbiguousIdentityError",
    "CertificateIdentity",
    "IdentitySource",
    "PrincipalKind",
    "RoleSource",
    "identity_from_certificate",
    "node_id_for",
    "node_id_for_identity",
    "validate_spiffe_id",
]

ROLE_OID = x509.ObjectIdentifier("2.5.4.72")
"""X.520 ``role`` attribute; openssl writes it with ``-subj '/CN=alice/role=operator'``."""

_NODE_ID_DOMAIN = b"flwrmtls/node-id/v1\x00"
_MAX_NODE_ID = (1 << 63) - 1  # node ids fit a signed 64-bit SQLite integer


class IdentitySource(enum.StrEnum):
    """What names a node: a certificate's Subject or SPIFFE ID, or an EC public key."""

    SUBJECT = "subject"
    SPIFFE = "spiffe"
    KEY = "key"
    """EC-key authentication: the canonical form is the hex of the key's SubjectPublicKeyInfo."""


class PrincipalKind(enum.StrEnum):
    """What a caller may be. The policy table grants methods to kinds."""

    NODE = "node"
    OPERATOR = "operator"
    USER = "user"
    ANONYMOUS = "anonymous"
    """A caller on a link without client authentication: nothing tells callers apart."""
    SERVERAPP = "serverapp"
    """A ServerApp process, by its run's token."""
    CLIENTAPP = "clientapp"
    """A ClientApp process, by its run's token."""


class RoleSource(enum.StrEnum):
    """Where a CLI certificate's role comes from (the link's ``--cli-role-source``)."""

    ROLE = "role"
    """The X.520 ``role`` attribute, as ``flwrmtls ca issue cli --role`` writes it."""
    OU = "ou"
    """The Subject's single organizational unit, for certificates from other CAs."""


_ROLE_KINDS = {"operator": PrincipalKind.OPERATOR, "user": PrincipalKind.USER}


class AmbiguousIdentityError(ValueError):
    """The certificate does not name exactly one holder (or names an unknown role)."""


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """The holder a certificate names, as the link sees it."""

    source: IdentitySource
    value: str
    """Readable form: RFC 4514 Subject (``CN=node-1,O=Hospital A``) or the SPIFFE ID."""
    canonical: str
    """Stable encoding the node id is derived from (independent of string rendering)."""
    organisation: str
    kind: PrincipalKind

    @property
    def node_id(self) -> int:
        return node_id_for(self.source, self.canonical)


def node_id_for(source: IdentitySource, canonical: str) -> int:
    """The node id of an identity: 63 bits of SHA-256 over a domain-separated encoding."""
    digest = hashlib.sha256(
        _NODE_ID_DOMAIN + source.value.encode() + b"\x00" + canonical.encode("utf-8")
    ).digest()
    return (int.from_bytes(digest[:8], "big") & _MAX_NODE_ID) or 1


def _single_value(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str | None:
    attributes = name.get_attributes_for_oid(oid)
    if len(attributes) > 1:
        raise AmbiguousIdentityError(f"certificate Subject has {len(attributes)} {label} values")
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _canonical_subject(name: x509.Name) -> str:
    """JSON of the RDN sequence in DER order; each RDN's attributes sorted by (oid, value)."""
    rdns = []
    for rdn in name.rdns:
        attributes = []
        for attribute in rdn:
            value = attribute.value
            text = value if isinstance(value, str) else value.hex()
            attributes.append((attribute.oid.dotted_string, text))
        rdns.append(sorted(attributes))
    return json.dumps(rdns, ensure_ascii=False, separators=(",", ":"))


def _parsed_subject(text: str) -> x509.Name | None:
    try:
        return x509.Name.from_rfc4514_string(text, {"role": ROLE_OID})
    except ValueError:
        return None


def node_id_for_identity(text: str, source: IdentitySource) -> int:
    """The node id of an identity written as the link shows it (``CN=node-1,O=Hospital A``,
    or a SPIFFE ID): what a certificate with that identity gets. Raises ValueError when
    ``text`` is not such an identity for ``source``."""
    if source is IdentitySource.SPIFFE:
        return node_id_for(source, validate_spiffe_id(text))
    if source is not IdentitySource.SUBJECT:
        raise ValueError(f"nodes named by {source.value} have no certificate identity")
    name = _parsed_subject(text)
    shown = name.rfc4514_string({ROLE_OID: "role"}) if name is not None else ""
    if name is None and (spaced := _parsed_subject(re.sub(r"\s*([,+])\s*", r"\1", text))):
        shown = spaced.rfc4514_string({ROLE_OID: "role"})  # for the hint only
    if name is None or not name.rdns or shown != text:
        hint = f" (did you mean {shown!r}?)" if shown else ""
        raise ValueError(
            f"{text!r} is not a certificate Subject as the link shows it{hint}: RFC 4514, "
            "most specific first, no spaces after commas, e.g. 'CN=node-1,O=Hospital A' "
            "(`flwrmtls ca show CERT` prints it)"
        )
    return node_id_for(source, _canonical_subject(name))


_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_SPIFFE_LENGTH = 2048


def validate_spiffe_id(uri: str) -> str:
    """Return ``uri`` if it is a SPIFFE ID as the SPIFFE spec defines one, else raise.

    grpc's ``peer_spiffe_id`` accepts a trailing slash, which the spec forbids; this does not.
    """
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise AmbiguousIdentityError(f"URI SAN {uri!r} is not a SPIFFE ID (spiffe://...)")
    if len(uri) > _MAX_SPIFFE_LENGTH:
        raise AmbiguousIdentityError("SPIFFE ID is longer than 2048 bytes")
    rest = uri[len(prefix) :]
    trust_domain, slash, path = rest.partition("/")
    if not trust_domain or not _TRUST_DOMAIN.match(trust_domain):
        raise AmbiguousIdentityError(
            f"SPIFFE ID {uri!r} has an invalid trust domain "
            "(lowercase letters, digits, '.', '-', '_' only; no port or user info)"
        )
    if slash:
        segments = path.split("/")
        for segment in segments:
            if not segment:
                raise AmbiguousIdentityError(
                    f"SPIFFE ID {uri!r} has an empty path segment or a trailing slash"
                )
            if segment in {".", ".."} or not _PATH_SEGMENT.match(segment):
                raise AmbiguousIdentityError(f"SPIFFE ID {uri!r} has an invalid path segment")
    return uri


def _role_kind(subject: x509.Name, role_source: RoleSource) -> PrincipalKind:
    if role_source is RoleSource.OU:
        unit = _single_value(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU")
        return _ROLE_KINDS.get(unit or "", PrincipalKind.NODE)
    role = _single_value(subject, ROLE_OID, "role")
    if role is None:
        return PrincipalKind.NODE
    kind = _ROLE_KINDS.get(role)
    if kind is None:
        raise AmbiguousIdentityError(
            f"certificate role {role!r} is unknown (expected 'operator' or 'user')"
        )
    return kind


def identity_from_certificate(
    certificate: x509.Certificate,
    source: IdentitySource = IdentitySource.SUBJECT,
    role_source: RoleSource = RoleSource.ROLE,
) -> CertificateIdentity:
    """The identity a verified leaf certificate maps to; raises AmbiguousIdentityError."""
    subject = certificate.subject
    _single_value(subject, NameOID.COMMON_NAME, "CN")
    organisation = _single_value(subject, NameOID.ORGANIZATION_NAME, "O") or ""
    kind = _role_kind(subject, role_source)
    if source is IdentitySource.SUBJECT:
        if not subject.rdns:
            raise AmbiguousIdentityError("certificate Subject is empty")
        return CertificateIdentity(
            source=source,
            value=subject.rfc4514_string({ROLE_OID: "role"}),
            canonical=_canonical_subject(subject),
            organisation=organisation,
            kind=kind,
        )
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise AmbiguousIdentityError(
            f"certificate has {len(uris)} URI SANs; SPIFFE identity needs exactly one"
        )
    spiffe_id = validate_spiffe_id(uris[0])
    return CertificateIdentity(
        source=source,
        value=spiffe_id,
        canonical=spiffe_id,
        organisation=organisation,
        kind=kind,
    )
