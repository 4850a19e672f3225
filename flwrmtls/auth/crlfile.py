"""One CRL file, read and judged on its own: what the link takes from it, or why it refuses it.

Rules kept here:

* A file holds one or more CRLs, PEM or DER; anything else is an InputError naming the file.
* A CRL that asks for something the link does not honour is refused whole
  (:class:`CrlRefused`: the file, what is wrong, what to do), never half-understood:
  an unknown critical CRL or entry extension (RFC 5280 5.2, 5.3); an indirect CRL
  (IssuingDistributionPoint indirectCRL, or a certificateIssuer entry); a scope by reasons
  (onlySomeReasons) or of attribute certificates; a distribution point named relative to the
  issuer; a delta CRL without a CRL number, or whose number is not above its BaseCRLNumber.
* A CRL whose thisUpdate is later than the link's clock (beyond :data:`CLOCK_SKEW`) is refused
  with :class:`CrlNotYetValid`, so a caller can try it again once the clock has caught up.
* The scopes the link honours are kept as a :class:`CrlScope`: everything, or a partition by
  certificate kind (onlyContainsUserCerts / onlyContainsCACerts) and/or distribution point
  names, matched against a certificate's CRLDistributionPoints.
* Entries are read once into a dict serial -> :class:`Revocation`; a delta CRL's removeFromCRL
  entries are kept apart as ``released`` (see :mod:`flwrmtls.auth.crlset` for what they may
  undo).
* Nothing here verifies a signature: the issuer's key comes from a verified chain, per caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from flwrmtls.errors import InputError

__all__ = [
    "ALL_CERTIFICATES",
    "CLOCK_SKEW",
    "CrlNotYetValid",
    "CrlRefused",
    "CrlScope",
    "ParsedCrl",
    "Revocation",
    "certificate_distribution_points",
    "parse_crl_file",
]

CLOCK_SKEW = timedelta(minutes=5)
"""How far a CRL's thisUpdate may be ahead of the link's clock (clocks of CA and link differ)."""

_PEM_MARKER = b"-----BEGIN X509 CRL-----"

_UNDERSTOOD_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.DELTA_CRL_INDICATOR,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.FRESHEST_CRL,
    }
)
"""CRL extensions the link processes or may safely ignore (RFC 5280 5.2); any other one marked
critical refuses the CRL."""

_UNDERSTOOD_ENTRY_EXTENSIONS = frozenset(
    {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
)


class CrlRefused(InputError):
    """A CRL the link will not use; the message names the file and what to do."""


class CrlNotYetValid(CrlRefused):
    """A CRL issued later than the link's clock: it may become usable as time passes."""


@dataclass(frozen=True, slots=True)
class Revocation:
    revoked_at: datetime
    reason: str
    """RFC 5280 name of the reason: keyCompromise, certificateHold, ... or unspecified."""


@dataclass(frozen=True, slots=True)
class CrlScope:
    """Which certificates of its issuer a CRL speaks for (its IssuingDistributionPoint)."""

    only_user: bool = False
    only_ca: bool = False
    names: frozenset[x509.GeneralName] = frozenset()
    """Distribution point names: a certificate is in the partition when one of its
    CRLDistributionPoints names one of these."""

    @property
    def is_partition(self) -> bool:
        return self != ALL_CERTIFICATES

    def covers(self, is_ca: bool, distribution_points: frozenset[x509.GeneralName]) -> bool:
        if self.only_user and is_ca:
            return False
        if self.only_ca and not is_ca:
            return False
        return not self.names or not self.names.isdisjoint(distribution_points)

    def describe(self) -> str:
        parts = []
        if self.only_user:
            parts.append("user certificates")
        if self.only_ca:
            parts.append("CA certificates")
        parts += sorted(_describe_name(name) for name in self.names)
        return ", ".join(parts) if parts else "all certificates"


ALL_CERTIFICATES = CrlScope()

_GENERAL_NAME_PREFIX: dict[type[x509.GeneralName], str] = {
    x509.UniformResourceIdentifier: "URI",
    x509.DNSName: "DNS",
    x509.DirectoryName: "DirName",
    x509.RFC822Name: "email",
    x509.IPAddress: "IP",
}
"""How ``describe`` names a distribution point (as openssl prints them)."""


def _describe_name(name: x509.GeneralName) -> str:
    value = name.value
    text = value.rfc4514_string() if isinstance(value, x509.Name) else str(value)
    return f"{_GENERAL_NAME_PREFIX.get(type(name), type(name).__name__)}:{text}"


@dataclass(frozen=True, slots=True, eq=False)
class ParsedCrl:
    """One CRL as the link uses it: read once, no extension parsing afterwards."""

    crl: x509.CertificateRevocationList
    source: Path
    issuer: x509.Name
    number: int | None
    base_number: int | None
    """A delta CRL's BaseCRLNumber; None for a complete CRL."""
    scope: CrlScope
    this_update: datetime
    next_update: datetime | None
    revoked: Mapping[int, Revocation]
    released: frozenset[int] = field(default_factory=frozenset)
    """A delta CRL's removeFromCRL serials."""

    @property
    def is_delta(self) -> bool:
        return self.base_number is not None

    def describe(self) -> str:
        kind = "delta CRL" if self.is_delta else "CRL"
        number = f" #{self.number}" if self.number is not None else ""
        return f"{kind}{number} of {self.issuer.rfc4514_string()} in {self.source}"


def certificate_distribution_points(certificate: x509.Certificate) -> frozenset[x509.GeneralName]:
    """The full names of a certificate's own CRL distribution points (without cRLIssuer: an
    indirect CRL issuer is not supported, so such a point matches no partition)."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(
        name
        for point in points
        if point.crl_issuer is None and point.full_name is not None
        for name in point.full_name
    )


def parse_crl_file(path: Path, now: datetime) -> tuple[ParsedCrl, ...]:
    """Every CRL in ``path``, judged; CrlRefused (an InputError) for anything unusable."""
    return tuple(_parse_one(crl, path, now) for crl in _read(path))


def _read(path: Path) -> list[x509.CertificateRevocationList]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read CRL file {path}: {error.strerror}") from None
    try:
        if _PEM_MARKER in data:
            blocks = data.split(_PEM_MARKER)[1:]
            return [x509.load_pem_x509_crl(_PEM_MARKER + block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise InputError(
            f"{path} is not a CRL (expected PEM '-----BEGIN X509 CRL-----' or DER): "
            "check --ssl-crl-file"
        ) from None


def _parse_one(crl: x509.CertificateRevocationList, path: Path, now: datetime) -> ParsedCrl:
    def refuse(what: str, todo: str = _DEFAULT_TODO) -> CrlRefused:
        return _refusal(path, crl.issuer, what, todo)

    try:
        extensions = list(crl.extensions)
        entries = list(crl)
        entry_extensions = [list(entry.extensions) for entry in entries]
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
        raise refuse(f"cannot be parsed ({error})", "fix or replace the file") from None
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRL_EXTENSIONS:
            raise refuse(f"has an unknown critical extension {extension.oid.dotted_string}")
    by_class = {type(extension.value): extension.value for extension in extensions}
    number_ext = by_class.get(x509.CRLNumber)
    delta_ext = by_class.get(x509.DeltaCRLIndicator)
    number = number_ext.crl_number if isinstance(number_ext, x509.CRLNumber) else None
    base = delta_ext.crl_number if isinstance(delta_ext, x509.DeltaCRLIndicator) else None
    if base is not None and (number is None or number <= base):
        raise refuse(
            f"is a delta CRL whose CRL number ({number}) is not above its base ({base})",
            "a delta CRL must carry a CRL number above its BaseCRLNumber",
        )
    idp = by_class.get(x509.IssuingDistributionPoint)
    scope = (
        _scope(idp, path, crl.issuer) if isinstance(idp, x509.IssuingDistributionPoint) else None
    )
    if crl.last_update_utc > now + CLOCK_SKEW:
        raise CrlNotYetValid(
            f"{path}: the CRL of {crl.issuer.rfc4514_string()} was issued in the future "
            f"(thisUpdate {crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC, the link's clock says "
            f"{now:%Y-%m-%d %H:%M:%S} UTC); check the clocks of the CA and the link"
        )
    revoked: dict[int, Revocation] = {}
    released: set[int] = set()
    for entry, entry_exts in zip(entries, entry_extensions, strict=True):
        reason = "unspecified"
        for extension in entry_exts:
            if extension.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise refuse(
                    "names other issuers in its entries (an indirect CRL)",
                    "give the link each issuer's own CRL",
                )
            if extension.critical and extension.oid not in _UNDERSTOOD_ENTRY_EXTENSIONS:
                raise refuse(
                    f"has an entry (serial {entry.serial_number:x}) with an unknown critical "
                    f"extension {extension.oid.dotted_string}"
                )
            if isinstance(extension.value, x509.CRLReason):
                reason = str(extension.value.reason.value)
        if base is not None and reason == x509.ReasonFlags.remove_from_crl.value:
            released.add(entry.serial_number)
        else:
            revoked[entry.serial_number] = Revocation(entry.revocation_date_utc, reason)
    return ParsedCrl(
        crl=crl,
        source=path,
        issuer=crl.issuer,
        number=number,
        base_number=base,
        scope=scope or ALL_CERTIFICATES,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked=revoked,
        released=frozenset(released),
    )


_DEFAULT_TODO = "publish a CRL without it"


def _refusal(path: Path, issuer: x509.Name, what: str, todo: str = _DEFAULT_TODO) -> CrlRefused:
    return CrlRefused(
        f"{path}: the CRL of {issuer.rfc4514_string()} {what}; the link does not use it: {todo}"
    )


def _scope(idp: x509.IssuingDistributionPoint, path: Path, issuer: x509.Name) -> CrlScope:
    def refuse(what: str, todo: str = _DEFAULT_TODO) -> CrlRefused:
        return _refusal(path, issuer, what, todo)

    if idp.indirect_crl:
        raise refuse(
            "is an indirect CRL (indirectCRL in its IssuingDistributionPoint)",
            "give the link each issuer's own CRL",
        )
    if idp.only_some_reasons is not None:
        raise refuse(
            "covers only some revocation reasons (onlySomeReasons)",
            "publish CRLs that cover every reason",
        )
    if idp.only_contains_attribute_certs:
        raise refuse("covers only attribute certificates (onlyContainsAttributeCerts)")
    if idp.relative_name is not None:
        raise refuse(
            "names its distribution point relative to the issuer (nameRelativeToCRLIssuer)",
            "use a fullName distribution point",
        )
    return CrlScope(
        only_user=idp.only_contains_user_certs,
        only_ca=idp.only_contains_ca_certs,
        names=frozenset(idp.full_name or ()),
    )
