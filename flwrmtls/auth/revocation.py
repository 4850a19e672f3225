"""Certificate revocation lists, as the link checks them on every call.

grpcio does not check CRLs, so the link does. One CRL is read and judged in
:mod:`flwrmtls.auth.crlfile`; what is in force per issuer (complete + delta, partitions) is
decided in :mod:`flwrmtls.auth.crlset`. Rules kept here:

* ``--ssl-crl-file`` names one file or a directory of files. At start every file must be
  usable, or the link does not start (one line naming the file). Files are polled: a changed
  file is re-read; a file that breaks, is refused or vanishes keeps its last good CRLs, so an
  issuer that once had a CRL never silently becomes unchecked. Kept CRLs count until their
  nextUpdate, then their issuer fails closed. Each such transition is logged once.
* A CRL only counts once its signature verifies with the issuer's key from the verified chain
  (never a key from the CRL file), and only when that issuer certificate may sign CRLs
  (keyUsage cRLSign, or no keyUsage). Otherwise, or past its nextUpdate, or when no CRL of an
  issuer that has CRLs covers the certificate, the certificate is refused: fail closed
  (``crl-unavailable``), since the link cannot say what was revoked.
* An issuer with no CRL ever loaded is not revocation-checked; :meth:`RevocationStore.coverage`
  says which issuers are covered, by what, until when (``flwrmtls supernode list``).
* The per-call check is dictionary lookups and a comparison: parsing, merging and signature
  checks happen once per file version and per issuer key and certificate scope.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flwrmtls.auth.authenticator import AuthenticationFailed, RefusalReason
from flwrmtls.auth.crlcoverage import CoverageRow, CoverageState, not_checked_rows, scope_row
from flwrmtls.auth.crlfile import (
    CrlNotYetValid,
    ParsedCrl,
    Revocation,
    certificate_distribution_points,
    parse_crl_file,
)
from flwrmtls.auth.crlset import IssuerCrls, ScopeCrls, crls_in_force
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import InputError

__all__ = ["IssuedBy", "RevocationStore", "coverage_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedBy:
    """One link of a verified chain, in the form the per-call check needs (built once)."""

    serial: int
    issuer_name: x509.Name
    issuer_key: x509.Certificate
    issuer_key_der: bytes
    issuer_display: str
    is_ca: bool = False
    distribution_points: frozenset[x509.GeneralName] = frozenset()
    issuer_may_sign_crls: bool = True
    verdict_key: tuple[bytes, bool, frozenset[x509.GeneralName]] = (b"", False, frozenset())
    """What a judgement of the issuer's CRLs depends on: the issuer key and the scope."""

    @classmethod
    def of(cls, certificate: x509.Certificate, issuer: x509.Certificate) -> IssuedBy:
        key_der = issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        is_ca = _is_ca(certificate)
        points = certificate_distribution_points(certificate)
        return cls(
            serial=certificate.serial_number,
            issuer_name=issuer.subject,
            issuer_key=issuer,
            issuer_key_der=key_der,
            issuer_display=issuer.subject.rfc4514_string(),
            is_ca=is_ca,
            distribution_points=points,
            issuer_may_sign_crls=_may_sign_crls(issuer),
            verdict_key=(key_der, is_ca, points),
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        return issuer.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True  # RFC 5280 4.2.1.3: without keyUsage, every use is allowed


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the issuer's CRLs say for certificates of one scope, under one issuer key."""

    failure: str | None
    revoked: Mapping[int, Revocation]
    next_update: datetime | None


@dataclass(frozen=True, slots=True)
class _FileRecord:
    """The last good CRLs of one file, and what became of the file since."""

    crls: tuple[ParsedCrl, ...]
    stamp: tuple[int, int, int] | None
    problem: str | None = None
    """None while the file is as read; else why its CRLs are kept (vanished, broken)."""
    retry: bool = False
    """Re-read on every poll (its CRL was issued later than the link's clock)."""


@dataclass(slots=True, eq=False)
class _Issuer:
    """An issuer's CRLs in force, with the per-key, per-scope judgements made so far."""

    crls: IssuerCrls
    verdicts: dict[tuple[bytes, bool, frozenset[x509.GeneralName]], _Verdict] = field(
        default_factory=dict
    )
    failures_seen: dict[str, str] = field(default_factory=dict)
    """Scope description -> why a judgement failed (for the coverage report)."""


def _crl_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not path.exists():
        raise InputError(f"CRL file {path} does not exist: check --ssl-crl-file")
    return [path]


def _stamp(file: Path) -> tuple[int, int, int]:
    stat = os.stat(file)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


class RevocationStore:
    """The CRLs in force, reloaded when their files change; the last good ones are kept."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        """Load every CRL under ``path``; InputError (one line) if any file is unusable."""
        self.path = path
        self._clock = clock or SystemClock()
        now = self._clock.now()
        self._files: dict[Path, _FileRecord] = {}
        for file in _crl_files(path):
            self._files[file] = _FileRecord(parse_crl_file(file, now), _stamp(file))
        self._by_issuer: dict[x509.Name, _Issuer] = {}
        self._states: dict[tuple[str, str], CoverageState] = {}
        self._unchecked_seen: dict[x509.Name, str] = {}
        """Issuers of verified chains without a CRL, for the coverage report."""
        self.generation = 0
        self._rebuild()
        self._log_transitions(now, initial=True)

    @property
    def issuers(self) -> list[x509.Name]:
        return list(self._by_issuer)

    @property
    def next_updates(self) -> list[datetime]:
        """When the CRLs in force go stale (their next-update): the link judges its open calls
        again then, as a stale CRL refuses its issuer's certificates."""
        return [
            group.next_update
            for issuer in self._by_issuer.values()
            for group in issuer.crls.groups
            if group.next_update is not None
        ]

    def _rebuild(self) -> None:
        everything = [crl for record in self._files.values() for crl in record.crls]
        self._by_issuer = {
            issuer: _Issuer(crls) for issuer, crls in crls_in_force(everything).items()
        }
        self.generation += 1

    def refresh(self) -> bool:
        """Re-read changed files; True when the CRLs in force changed. Never raises for a
        file's content: a broken, refused or vanished file keeps its last good CRLs."""
        now = self._clock.now()
        try:
            files = _crl_files(self.path)
        except (OSError, InputError):
            files = []
        changed = False
        for file in files:
            changed |= self._reread(file, now)
        for file in list(self._files.keys() - set(files)):
            changed |= self._vanished(file)
        if changed:
            self._rebuild()
        self._log_transitions(now)
        return changed

    def _reread(self, file: Path, now: datetime) -> bool:
        record = self._files.get(file)
        try:
            stamp = _stamp(file)
        except OSError:
            return False if record is None else self._vanished(file)
        if record is not None and record.stamp == stamp and not record.retry:
            return False
        try:
            crls = parse_crl_file(file, now)
        except InputError as error:
            kept = record.crls if record is not None else ()
            problem = f"{error}" if kept else None
            if record is None or record.stamp != stamp:
                what = "keeping its last good CRLs" if kept else "no CRL of it was in use"
                log.error("CRL file %s changed but cannot be used, %s: %s", file, what, error)
            self._files[file] = _FileRecord(
                kept, stamp, problem, retry=isinstance(error, CrlNotYetValid)
            )
            return False
        self._files[file] = _FileRecord(crls, stamp)
        log.info("CRL file %s read: %s", file, "; ".join(c.describe() for c in crls) or "empty")
        return True

    def _vanished(self, file: Path) -> bool:
        record = self._files[file]
        if not record.crls:
            del self._files[file]
            return False
        if record.stamp is None:
            return False  # already reported
        log.error(
            "CRL file %s vanished; its CRLs stay in force until their next update: %s",
            file,
            "; ".join(c.describe() for c in record.crls),
        )
        self._files[file] = _FileRecord(
            record.crls, None, f"{file} vanished (its last good CRLs are kept)"
        )
        return False

    # --- the per-call check -------------------------------------------------------------------

    def check(self, link: IssuedBy, now: datetime) -> None:
        """Raise AuthenticationFailed if the issuer's CRLs revoke ``link`` or are unusable.

        Runs on every call: dictionary lookups and comparisons only, once the issuer key and
        scope were judged.
        """
        issuer = self._by_issuer.get(link.issuer_name)
        if issuer is None:
            if link.issuer_name not in self._unchecked_seen:
                self._unchecked_seen[link.issuer_name] = link.issuer_display
            return
        verdict = issuer.verdicts.get(link.verdict_key)
        if verdict is None:
            verdict = self._judge(issuer, link)
        if verdict.failure is not None:
            raise AuthenticationFailed(RefusalReason.CRL_UNAVAILABLE, verdict.failure)
        next_update = verdict.next_update
        if next_update is not None and now > next_update:
            raise AuthenticationFailed(
                RefusalReason.CRL_UNAVAILABLE,
                f"the link's CRL for issuer {link.issuer_display} expired at "
                f"{_utc(next_update)} (next update passed)",
            )
        entry = verdict.revoked.get(link.serial)
        if entry is not None:
            raise AuthenticationFailed(
                RefusalReason.REVOKED,
                f"certificate revoked (serial {link.serial:x}, reason {entry.reason}, "
                f"since {_utc(entry.revoked_at)})",
            )

    def _judge(self, issuer: _Issuer, link: IssuedBy) -> _Verdict:
        groups = issuer.crls.covering(link.is_ca, link.distribution_points)
        verdict = _judge_groups(groups, link)
        if verdict.failure is not None:  # for the report; a certificate outside every
            for group in groups:  # partition is its own affair, not its issuer's
                issuer.failures_seen[group.scope.describe()] = verdict.failure
        issuer.verdicts[link.verdict_key] = verdict
        return verdict

    # --- what is covered ---------------------------------------------------------------------

    def coverage(self, now: datetime) -> list[CoverageRow]:
        """One row per issuer and scope: its CRLs in force, their files and state; then the
        issuers seen in verified chains without any CRL."""
        problems = {file: r.problem for file, r in self._files.items() if r.problem}
        rows = [
            scope_row(group, issuer.failures_seen.get(group.scope.describe()), problems, now)
            for issuer in self._by_issuer.values()
            for group in issuer.crls.groups
        ]
        covered = {row.issuer for row in rows}
        return rows + not_checked_rows(self._unchecked_seen, covered)

    def _log_transitions(self, now: datetime, *, initial: bool = False) -> None:
        states = {(row.issuer, row.scope): row for row in self.coverage(now)}
        for key, row in states.items():
            before = self._states.get(key)
            if before is row.state:
                continue
            self._states[key] = row.state
            what = f"CRL for issuer {row.issuer} ({row.scope})"
            if row.state is CoverageState.NOT_CHECKED:
                log.warning("issuer %s is NOT revocation-checked (no CRL)", row.issuer)
            elif row.state is CoverageState.CURRENT:
                if not initial:
                    log.info("%s current: %s until %s", what, row.kind, _when(row.next_update))
            elif row.state is CoverageState.KEPT:
                log.warning("%s kept until %s: %s", what, _when(row.next_update), row.detail)
            else:
                log.error("%s is %s: its certificates are refused: %s", what, row.state, row.detail)


def _when(moment: datetime | None) -> str:
    return _utc(moment) if moment is not None else "no next update"


def _judge_groups(groups: tuple[ScopeCrls, ...], link: IssuedBy) -> _Verdict:
    issuer = link.issuer_display
    if not groups:
        return _Verdict(
            f"no CRL of issuer {issuer} covers this certificate (the issuer's CRLs are "
            "partitioned and this certificate's partition has none)",
            {},
            None,
        )
    if not link.issuer_may_sign_crls:
        return _Verdict(
            f"the issuer certificate {issuer} may not sign CRLs (its keyUsage lacks cRLSign), "
            "so the link's CRLs for it cannot be trusted",
            {},
            None,
        )
    public_key = link.issuer_key.public_key()
    for group in groups:
        if group.failure is not None:
            return _Verdict(f"the link's CRLs for issuer {issuer}: {group.failure}", {}, None)
        for crl in group.in_force:
            if not crl.crl.is_signature_valid(public_key):  # type: ignore[arg-type]
                return _Verdict(
                    f"the link's CRL for issuer {issuer} has an invalid signature ({crl.source})",
                    {},
                    None,
                )
    next_updates = [g.next_update for g in groups if g.next_update is not None]
    if len(groups) == 1:
        revoked = groups[0].revoked
    else:
        merged: dict[int, Revocation] = {}
        for group in groups:
            merged.update(group.revoked)
        revoked = merged
    return _Verdict(None, revoked, min(next_updates) if next_updates else None)


def coverage_report(
    store: RevocationStore | None,
    client_cas: Iterable[x509.Certificate],
    now: datetime,
    ocsp_rows: Sequence[CoverageRow] = (),
) -> list[CoverageRow]:
    """What ``supernode list`` shows: the store's rows, the OCSP rows (issuers whose
    certificates the link asked OCSP responders about), and a ``not-checked`` row for each CA
    of the client CA bundle that has neither."""
    crl_rows = store.coverage(now) if store is not None else []
    rows = [row for row in crl_rows if row.state is not CoverageState.NOT_CHECKED]
    rows += ocsp_rows
    covered = {row.issuer for row in rows}
    unchecked = [row for row in crl_rows if row.issuer not in covered]
    covered |= {row.issuer for row in unchecked}
    return rows + unchecked + not_checked_rows((ca.subject for ca in client_cas), covered)
