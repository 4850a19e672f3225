"""What the link tells operators about revocation: which issuers are covered, by what, until when.

Rules kept here:

* One row per issuer and CRL scope, with one state from :class:`CoverageState` (one table,
  :data:`STATE_MEANING`, says what each state means for that issuer's certificates); and one
  row of kind :data:`OCSP_KIND` per issuer whose certificates the link asked OCSP responders
  about (:mod:`flwrmtls.auth.ocspstore` makes those).
* Every CA of the client CA bundle, and every issuer the link has seen in a verified chain,
  without a CRL gets a ``not-checked`` row: an unchecked issuer is always named, never implied.
* Rows are plain values; the Control API and the start-up log render them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from flwrmtls.auth.crlset import ScopeCrls

__all__ = [
    "OCSP_KIND",
    "STATE_MEANING",
    "CoverageRow",
    "CoverageState",
    "not_checked_rows",
    "scope_row",
]

OCSP_KIND = "ocsp"
"""The kind of a row that says how an issuer's certificates are checked by OCSP."""


class CoverageState(enum.StrEnum):
    CURRENT = "current"
    KEPT = "kept"
    EXPIRED = "expired"
    FAILING_CLOSED = "failing-closed"
    NOT_CHECKED = "not-checked"


STATE_MEANING = {
    CoverageState.CURRENT: "checked against CRLs read from their files (OCSP: against answers "
    "refreshed as planned)",
    CoverageState.KEPT: "checked against the last good CRLs of a file that vanished or broke, "
    "until their next update (OCSP: some answers are kept past a failed refresh, until their "
    "next update, by --ocsp-unreachable keep-last-good)",
    CoverageState.EXPIRED: "refused: the CRL's next update passed (fail closed)",
    CoverageState.FAILING_CLOSED: "refused: the CRLs cannot be used (fail closed; OCSP: some "
    "certificates have no usable answer and are refused)",
    CoverageState.NOT_CHECKED: "not revocation-checked: no CRL for this issuer, and no OCSP "
    "answer asked for",
}


@dataclass(frozen=True, slots=True)
class CoverageRow:
    issuer: str
    scope: str
    kind: str
    """complete, complete+delta, delta without base, none, or ocsp (:data:`OCSP_KIND`)."""
    sources: tuple[str, ...]
    crl_number: int | None
    delta_crl_number: int | None
    this_update: datetime | None
    next_update: datetime | None
    state: CoverageState
    detail: str
    expiry_warning: str = ""
    """Set when a CRL in force lapses soon (:mod:`flwrmtls.auth.crllapse`), else empty."""


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def scope_row(
    group: ScopeCrls, failure_seen: str | None, problems: Mapping[Path, str], now: datetime
) -> CoverageRow:
    """The row of one issuer and scope. ``failure_seen``: why a certificate of this scope was
    last refused for the CRLs themselves (bad signature, no cRLSign); ``problems``: files whose
    last good CRLs are kept, and why (each naming its file)."""
    in_force = group.in_force
    kept = sorted({problems[crl.source] for crl in in_force if crl.source in problems})
    if group.failure is not None:
        state, detail = CoverageState.FAILING_CLOSED, group.failure
    elif failure_seen is not None:
        state, detail = CoverageState.FAILING_CLOSED, failure_seen
    elif group.next_update is not None and now > group.next_update:
        state = CoverageState.EXPIRED
        detail = "; ".join([f"next update {_utc(group.next_update)} passed", *kept])
    elif kept:
        state, detail = CoverageState.KEPT, "; ".join(kept)
    else:
        state, detail = CoverageState.CURRENT, ""
    if group.complete is None:
        kind = "delta without base"
    elif group.delta is None:
        kind = "complete"
    else:
        kind = "complete+delta"
    return CoverageRow(
        issuer=group.issuer.rfc4514_string(),
        scope=group.scope.describe(),
        kind=kind,
        sources=tuple(sorted({str(crl.source) for crl in in_force})),
        crl_number=group.complete.number if group.complete is not None else None,
        delta_crl_number=group.delta.number if group.delta is not None else None,
        this_update=max((crl.this_update for crl in in_force), default=None),
        next_update=group.next_update,
        state=state,
        detail=detail,
    )


def not_checked_rows(issuers: Iterable[x509.Name], covered: set[str]) -> list[CoverageRow]:
    """A ``not-checked`` row for each of ``issuers`` not in ``covered`` (RFC 4514 names)."""
    rows: dict[str, CoverageRow] = {}
    for issuer in issuers:
        name = issuer.rfc4514_string()
        if name in covered or name in rows:
            continue
        rows[name] = CoverageRow(
            issuer=name,
            scope="all certificates",
            kind="none",
            sources=(),
            crl_number=None,
            delta_crl_number=None,
            this_update=None,
            next_update=None,
            state=CoverageState.NOT_CHECKED,
            detail="no CRL for this issuer: its certificates are not revocation-checked",
        )
    return list(rows.values())
