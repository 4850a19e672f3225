"""Certificate revocation lists, as the link checks them on every call.

grpcio does not check CRLs, so the link does. Rules kept here:

* ``--ssl-crl-file`` names one file or a directory of files; each file holds one or more CRLs,
  PEM or DER. A file that changes on disk is re-read (see :meth:`RevocationStore.refresh`);
  a broken new file is reported and the last good CRLs stay in use.
* A CRL is matched to a certificate by the certificate's issuer, and only counts once its
  signature verifies with that issuer's key (taken from the verified chain, never from the
  CRL file itself). A CRL with a bad signature, or past its next-update, refuses every
  certificate of its issuer: fail closed, because a stale CRL cannot say what was revoked since.
* An issuer with no CRL loaded is not revocation-checked; the link logs at startup which
  issuers have CRLs.
* The per-call lookup is a dict access: parsing and signature checks happen once per file
  version and issuer key, not per call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flwrmtls.auth.authenticator import AuthenticationFailed, RefusalReason
from flwrmtls.errors import InputError

__all__ = ["IssuedBy", "LoadedCrl", "RevocationStore", "load_crls"]

log = logging.getLogger(__name__)

_PEM_MARKER = b"-----BEGIN X509 CRL-----"


@dataclass(frozen=True, slots=True)
class IssuedBy:
    """One link of a verified chain, in the form the per-call check needs (built once)."""

    serial: int
    issuer_name: x509.Name
    issuer_key: x509.Certificate
    issuer_key_der: bytes
    issuer_display: str

    @classmethod
    def of(cls, certificate: x509.Certificate, issuer: x509.Certificate) -> IssuedBy:
        return cls(
            serial=certificate.serial_number,
            issuer_name=issuer.subject,
            issuer_key=issuer,
            issuer_key_der=issuer.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            issuer_display=issuer.subject.rfc4514_string(),
        )


@dataclass(slots=True)
class LoadedCrl:
    crl: x509.CertificateRevocationList
    source: Path
    revoked: dict[int, tuple[datetime, str]]
    """serial -> (revocation date, reason name)."""
    next_update: datetime | None
    signature_ok: dict[bytes, bool] = field(default_factory=dict)
    """issuer public key (DER) -> whether this CRL's signature verifies with it."""

    def verified_by(self, link: IssuedBy) -> bool:
        known = self.signature_ok.get(link.issuer_key_der)
        if known is None:
            public_key = link.issuer_key.public_key()
            known = self.crl.is_signature_valid(public_key)  # type: ignore[arg-type]
            self.signature_ok[link.issuer_key_der] = known
        return known


def _reason_of(entry: x509.RevokedCertificate) -> str:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except x509.ExtensionNotFound:
        return "unspecified"


def _parse_file(path: Path) -> list[x509.CertificateRevocationList]:
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


def _crl_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not path.exists():
        raise InputError(f"CRL file {path} does not exist: check --ssl-crl-file")
    return [path]


def load_crls(path: Path) -> dict[x509.Name, LoadedCrl]:
    """Parse every CRL under ``path``, newest per issuer (by CRL number, then last update)."""
    by_issuer: dict[x509.Name, LoadedCrl] = {}
    for file in _crl_files(path):
        for crl in _parse_file(file):
            try:
                loaded = _load(crl, file)
            except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
                raise InputError(f"{file}: a CRL in it cannot be used: {error}") from None
            current = by_issuer.get(crl.issuer)
            if current is None or _freshness(crl) > _freshness(current.crl):
                by_issuer[crl.issuer] = loaded
    return by_issuer


def _load(crl: x509.CertificateRevocationList, file: Path) -> LoadedCrl:
    """Everything the per-call check needs from one CRL, read once (extensions may raise)."""
    loaded = LoadedCrl(
        crl=crl,
        source=file,
        revoked={
            entry.serial_number: (entry.revocation_date_utc, _reason_of(entry)) for entry in crl
        },
        next_update=crl.next_update_utc,
    )
    _freshness(crl)  # reads the CRL number extension now rather than on the hot path
    return loaded


def _freshness(crl: x509.CertificateRevocationList) -> tuple[int, datetime]:
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = -1
    return number, crl.last_update_utc


def _signature_of_tree(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when any CRL file under ``path`` changes (follows symlinks)."""
    files = _crl_files(path) if path.exists() else []
    result = []
    for file in files:
        stat = os.stat(file)
        result.append((str(file), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(result)


class RevocationStore:
    """The CRLs in force, reloaded when their files change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_issuer = load_crls(path)
        self._tree = _signature_of_tree(path)
        self.generation = 0

    @property
    def issuers(self) -> list[x509.Name]:
        return list(self._by_issuer)

    def refresh(self) -> bool:
        """Re-read the CRLs if their files changed; True when new CRLs were taken into use."""
        try:
            tree = _signature_of_tree(self.path)
        except (OSError, InputError) as error:
            log.error("CRL %s unreadable, keeping the last good CRLs: %s", self.path, error)
            return False
        if tree == self._tree:
            return False
        try:
            by_issuer = load_crls(self.path)
        except (OSError, InputError) as error:
            log.error(
                "CRL %s changed but cannot be used, keeping the last good CRLs: %s",
                self.path,
                error,
            )
            self._tree = tree  # report a broken version once
            return False
        self._by_issuer = by_issuer
        self._tree = tree
        self.generation += 1
        log.info("CRLs reloaded from %s (%d issuers)", self.path, len(by_issuer))
        return True

    def check(self, link: IssuedBy, now: datetime) -> None:
        """Raise AuthenticationFailed if the issuer's CRL revokes ``link`` or is unusable.

        Runs on every call: dictionary lookups and comparisons only.
        """
        loaded = self._by_issuer.get(link.issuer_name)
        if loaded is None:
            return
        if not loaded.verified_by(link):
            raise AuthenticationFailed(
                RefusalReason.CRL_UNAVAILABLE,
                f"the link's CRL for issuer {link.issuer_display} has an invalid signature",
            )
        next_update = loaded.next_update
        if next_update is not None and now > next_update:
            raise AuthenticationFailed(
                RefusalReason.CRL_UNAVAILABLE,
                f"the link's CRL for issuer {link.issuer_display} expired at "
                f"{next_update:%Y-%m-%d %H:%M:%S} UTC (next update passed)",
            )
        entry = loaded.revoked.get(link.serial)
        if entry is not None:
            revoked_at, reason = entry
            raise AuthenticationFailed(
                RefusalReason.REVOKED,
                f"certificate revoked (serial {link.serial:x}, reason {reason}, "
                f"since {revoked_at:%Y-%m-%d %H:%M:%S} UTC)",
            )
