"""Which CRLs are in force for each issuer, and what they revoke together (RFC 5280 5.2.4).

Pure functions over parsed CRLs (:mod:`flwrmtls.auth.crlfile`). Rules kept here:

* CRLs are grouped by issuer and scope (IssuingDistributionPoint). In each group the complete
  CRL with the highest CRL number is in force (then the latest thisUpdate); an older one never
  replaces it, and a delta CRL never stands in for a complete one.
* The newest delta CRL of a group is applied on top of the group's complete CRL when
  BaseCRLNumber <= the complete CRL's number < the delta's own number. The group then revokes
  the complete CRL's entries plus the delta's; a removeFromCRL entry of the delta releases a
  certificateHold only (a revocation for any other reason stays: it cannot be undone). A delta
  not newer than the complete CRL adds nothing and is left aside.
* A delta whose base is missing (no complete CRL in its group, or a BaseCRLNumber above the
  complete CRL's number) makes its group fail closed: revocations in the base it names are
  unknown to the link.
* A group is valid until the earliest nextUpdate of the CRLs it uses.
* A certificate is judged by every group of its issuer whose scope covers it; when its issuer
  has CRLs but none covers it (a partition without a CRL), it is refused: fail closed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from flwrmtls.auth.crlfile import CrlScope, ParsedCrl, Revocation

__all__ = ["IssuerCrls", "ScopeCrls", "crls_in_force"]

_HOLD = x509.ReasonFlags.certificate_hold.value


@dataclass(frozen=True, slots=True, eq=False)
class ScopeCrls:
    """The CRLs in force for one issuer and scope, and what they revoke together."""

    issuer: x509.Name
    scope: CrlScope
    complete: ParsedCrl | None
    delta: ParsedCrl | None
    revoked: Mapping[int, Revocation]
    next_update: datetime | None
    failure: str | None
    """Why this group fails closed (a delta without its base), or None."""
    set_aside: tuple[ParsedCrl, ...]
    """Older CRLs of the group, not in force."""

    @property
    def in_force(self) -> tuple[ParsedCrl, ...]:
        return tuple(crl for crl in (self.complete, self.delta) if crl is not None)


@dataclass(frozen=True, slots=True, eq=False)
class IssuerCrls:
    issuer: x509.Name
    groups: tuple[ScopeCrls, ...]

    def covering(
        self, is_ca: bool, distribution_points: frozenset[x509.GeneralName]
    ) -> tuple[ScopeCrls, ...]:
        return tuple(g for g in self.groups if g.scope.covers(is_ca, distribution_points))


def crls_in_force(crls: Iterable[ParsedCrl]) -> dict[x509.Name, IssuerCrls]:
    """Group ``crls`` by issuer and scope and decide, per group, what is in force."""
    groups: dict[tuple[x509.Name, CrlScope], list[ParsedCrl]] = defaultdict(list)
    for crl in crls:
        groups[(crl.issuer, crl.scope)].append(crl)
    by_issuer: dict[x509.Name, list[ScopeCrls]] = defaultdict(list)
    for (issuer, scope), members in groups.items():
        by_issuer[issuer].append(_group(issuer, scope, members))
    return {
        issuer: IssuerCrls(issuer, tuple(sorted(found, key=lambda g: g.scope.describe())))
        for issuer, found in by_issuer.items()
    }


def _newest(crl: ParsedCrl) -> tuple[int, datetime]:
    return (-1 if crl.number is None else crl.number), crl.this_update


def _group(issuer: x509.Name, scope: CrlScope, members: list[ParsedCrl]) -> ScopeCrls:
    completes = sorted((c for c in members if not c.is_delta), key=_newest)
    deltas = sorted((c for c in members if c.is_delta), key=_newest)
    complete = completes[-1] if completes else None
    delta = deltas[-1] if deltas else None
    failure = None
    if delta is not None:
        number, base = delta.number, delta.base_number
        assert number is not None  # crlfile refuses a delta without one
        assert base is not None
        if complete is None:
            failure = (
                f"delta CRL #{number} in {delta.source} needs its base CRL #{base}, "
                "and no complete CRL of this issuer is loaded"
            )
        elif complete.number is not None and number <= complete.number:
            delta = None  # the complete CRL is newer: it already holds what the delta says
        elif complete.number is None or base > complete.number:
            failure = (
                f"delta CRL #{number} in {delta.source} needs base CRL #{base} or newer, "
                f"but the newest complete CRL is #{complete.number} ({complete.source})"
            )
    in_force = [c for c in (complete, delta) if c is not None]
    next_updates = [c.next_update for c in in_force if c.next_update is not None]
    return ScopeCrls(
        issuer=issuer,
        scope=scope,
        complete=complete,
        delta=delta,
        revoked=_revoked(complete, delta) if failure is None else {},
        next_update=min(next_updates) if next_updates else None,
        failure=failure,
        set_aside=tuple(c for c in members if c not in in_force),
    )


def _revoked(complete: ParsedCrl | None, delta: ParsedCrl | None) -> Mapping[int, Revocation]:
    assert complete is not None
    if delta is None:
        return complete.revoked
    revoked = dict(complete.revoked)
    for serial in delta.released:
        entry = revoked.get(serial)
        if entry is not None and entry.reason == _HOLD:
            del revoked[serial]
    revoked.update(delta.revoked)
    return revoked
