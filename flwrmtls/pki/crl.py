"""Revocation: the CA's record of revoked serials, and the CRL built from it.

Rules kept here:

* ``ca/revoked.json`` is the CA's own record: every revoked serial with its date and reason,
  and the number of the last CRL written. It is the source of truth; ``crl.pem`` is derived
  from it and can always be rewritten.
* A missing or damaged record is an InputError, never an empty list: writing a CRL from a lost
  record would silently un-revoke certificates.
* Every CRL gets the next CRL number (RFC 5280 5.2.3), an AuthorityKeyIdentifier, ``last
  update`` = now and ``next update`` = now + days, 1 to :data:`CRL_MAX_DAYS` days. Entries
  carry their revocation date and a CRLReason extension, left out for ``unspecified`` as RFC
  5280 5.3.1 recommends.
* A serial is revoked at most once.
* A CRL and its record change together (:func:`publish_crl`): the CRL is staged, the record
  saved, the CRL moved into place; if the move fails the previous record is saved back, so the
  record never lists a revocation no CRL carries.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flwrmtls.errors import InputError
from flwrmtls.pki.files import stage_file, write_file
from flwrmtls.pki.privatekeys import SIGNATURE_HASH, PrivateKey

__all__ = [
    "CRL_MAX_DAYS",
    "RevocationReason",
    "RevocationRecord",
    "RevokedSerial",
    "build_crl",
    "crl_lists",
    "parse_serial",
    "publish_crl",
]

_RECORD_FORMAT = "flwrmtls-revocations/1"

CRL_MAX_DAYS = 365
"""The longest next-update a CRL gets: a year (what CA/Browser Forum rules allow for CRLs of
CA certificates; leaf CRLs there get 10 days). A copy of an older CRL passes for current for
as long as it is valid, so keep the validity short and renew the CRL often."""
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_serial(text: str) -> int:
    """A serial as users write it: ``0x1f2e`` or ``1F:2E`` (hex, as ``ca show`` and openssl
    print it), plain digits (decimal), or digits with letters a-f (hex)."""
    cleaned = text.strip()
    try:
        if cleaned.lower().startswith("0x"):
            serial = int(cleaned[2:], 16)
        elif ":" in cleaned:
            serial = int(cleaned.replace(":", ""), 16)
        elif cleaned.isdigit():
            serial = int(cleaned, 10)
        elif cleaned and set(cleaned) <= _HEX_DIGITS:
            serial = int(cleaned, 16)
        else:
            raise ValueError(cleaned)
    except ValueError:
        raise InputError(
            f"--serial {text!r} is not a serial number; pass hex (0x1f2e or 1F:2E) or decimal"
        ) from None
    if serial < 1:
        raise InputError(f"--serial {text!r} is not a certificate serial (must be positive)")
    return serial


class RevocationReason(enum.StrEnum):
    """Why a certificate was revoked, named as in RFC 5280 5.3.1."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"

    @property
    def reason_flag(self) -> x509.ReasonFlags:
        return _REASON_FLAGS[self]

    @classmethod
    def parse(cls, text: str, flag: str = "--reason") -> RevocationReason:
        """The reason RFC 5280 names ``text``, in any case (``keyCompromise``,
        ``keycompromise``); InputError naming the reasons for anything else."""
        for reason in cls:
            if reason.value.casefold() == text.strip().casefold():
                return reason
        names = ", ".join(reason.value for reason in cls)
        raise InputError(
            f"{flag} {text!r} is not an RFC 5280 revocation reason: give one of {names}"
        )


_REASON_FLAGS = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}


@dataclass(frozen=True, slots=True)
class RevokedSerial:
    """One revoked certificate, by serial."""

    serial: int
    revoked_at: datetime
    reason: RevocationReason

    def to_json(self) -> dict[str, str]:
        return {
            "serial": format(self.serial, "x"),
            "revoked_at": self.revoked_at.isoformat(),
            "reason": self.reason.value,
        }

    @classmethod
    def from_json(cls, entry: Any) -> RevokedSerial:
        revoked_at = datetime.fromisoformat(entry["revoked_at"])
        if revoked_at.tzinfo is None:
            raise ValueError("revocation date without a timezone")
        return cls(
            serial=int(entry["serial"], 16),
            revoked_at=revoked_at,
            reason=RevocationReason(entry["reason"]),
        )


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """The content of ``ca/revoked.json``."""

    crl_number: int
    """The number of the last CRL written (0 before the first)."""
    revoked: tuple[RevokedSerial, ...]

    @classmethod
    def empty(cls) -> RevocationRecord:
        return cls(crl_number=0, revoked=())

    def find(self, serial: int) -> RevokedSerial | None:
        return next((entry for entry in self.revoked if entry.serial == serial), None)

    def with_revoked(self, entry: RevokedSerial) -> RevocationRecord:
        """A record with ``entry`` added; InputError if its serial is already revoked."""
        previous = self.find(entry.serial)
        if previous is not None:
            raise InputError(
                f"serial {entry.serial:#x} was already revoked on "
                f"{previous.revoked_at.isoformat()} ({previous.reason.value}); nothing changed"
            )
        return RevocationRecord(crl_number=self.crl_number, revoked=(*self.revoked, entry))

    def with_next_crl_number(self) -> RevocationRecord:
        return RevocationRecord(crl_number=self.crl_number + 1, revoked=self.revoked)

    @classmethod
    def load(cls, path: Path) -> RevocationRecord:
        """Read the record; InputError if it is missing or damaged (never an empty record)."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"the CA's revocation record {path} is missing; restore it from a backup "
                "(writing a CRL without it would un-revoke certificates)"
            ) from None
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the CA's revocation record {path}: {error}") from None
        try:
            if document["format"] != _RECORD_FORMAT:
                raise ValueError(f"unknown format {document['format']!r}")
            crl_number = int(document["crl_number"])
            revoked = tuple(RevokedSerial.from_json(entry) for entry in document["revoked"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"the CA's revocation record {path} is damaged ({error}); restore it from a backup"
            ) from None
        return cls(crl_number=crl_number, revoked=revoked)

    def save(self, path: Path) -> None:
        """Write the record atomically (it replaces the previous one)."""
        document = {
            "format": _RECORD_FORMAT,
            "crl_number": self.crl_number,
            "revoked": [entry.to_json() for entry in self.revoked],
        }
        text = json.dumps(document, indent=2) + "\n"
        write_file(path, text.encode("utf-8"), secret=False, force=True)


def build_crl(
    *,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Sequence[RevokedSerial],
    crl_number: int,
    now: datetime,
    days: int,
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer_certificate`` listing ``revoked``, valid from ``now`` for ``days``."""
    if not 1 <= days <= CRL_MAX_DAYS:
        raise InputError(
            f"--days {days}: a CRL must be valid for 1 to {CRL_MAX_DAYS} days (default 7): "
            "links refuse every certificate of the CA once it lapses, so renew it well before"
        )
    issuer_key_id = issuer_certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id),
            critical=False,
        )
    )
    for entry in revoked:
        revoked_builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not RevocationReason.UNSPECIFIED:
            revoked_builder = revoked_builder.add_extension(
                x509.CRLReason(entry.reason.reason_flag), critical=False
            )
        builder = builder.add_revoked_certificate(revoked_builder.build())
    return builder.sign(issuer_key, SIGNATURE_HASH)


def crl_lists(crl_path: Path, issuer_certificate: x509.Certificate, serial: int) -> bool:
    """Whether ``crl_path`` holds a CRL signed by ``issuer_certificate`` that lists ``serial``."""
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        signed = crl.is_signature_valid(issuer_certificate.public_key())  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError):
        return False
    return signed and crl.get_revoked_certificate_by_serial_number(serial) is not None


def publish_crl(
    record: RevocationRecord,
    *,
    crl_path: Path,
    record_path: Path,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    now: datetime,
    days: int,
    previous_record: RevocationRecord | None = None,
) -> Path:
    """Write the CRL of ``record`` (its next CRL number, valid ``days`` from ``now``) and save
    ``record``, as one change; returns ``crl_path``.

    The CRL is staged first (a full disk or an unwritable directory fails before anything
    changed), then the record is saved, then the CRL is moved into place. If that last step
    fails, ``previous_record`` (the record before this change) is saved back, so the record
    never lists a revocation that no CRL carries; were that restore to fail too, ``revoke`` of
    the same serial notices and rewrites the CRL (:func:`crl_lists`).
    """
    record = record.with_next_crl_number()
    crl = build_crl(
        issuer_certificate=issuer_certificate,
        issuer_key=issuer_key,
        revoked=record.revoked,
        crl_number=record.crl_number,
        now=now,
        days=days,
    )
    staged = stage_file(crl_path, crl.public_bytes(serialization.Encoding.PEM), secret=False)
    try:
        record.save(record_path)
    except InputError:
        staged.discard()
        raise
    try:
        staged.commit()
    except InputError as error:
        if previous_record is None:
            raise
        try:
            previous_record.save(record_path)
        except InputError:
            raise InputError(
                f"{error}; the revocation is recorded but not yet in the CRL: run the same "
                "`flwrmtls ca revoke` again once the CRL can be written"
            ) from None
        raise InputError(f"{error}; nothing was revoked: fix it and run again") from None
    return crl_path
