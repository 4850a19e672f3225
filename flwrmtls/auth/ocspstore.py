"""The OCSP answers the link holds, and the per-call check against them.

Rules kept here:

* One entry per certificate asked about (an :class:`~flwrmtls.auth.ocspcheck.OcspSubject`,
  keyed by its issuer's key and its serial), made when the link first sees it in a verified
  chain: a node's admission. The per-call check (:meth:`OcspStore.check`) is dictionary
  lookups and comparisons. Asking responders is the link's refresher
  (:mod:`flwrmtls.auth.ocsprefresh`): it takes what is due (:meth:`OcspStore.due`) and hands
  back each verified answer or failure (:meth:`OcspStore.apply`), on the event loop.
* What an entry makes of its certificate is one table (:func:`standing_of`, then
  :data:`STANDING_REFUSAL`); over a chain the strongest counts (:data:`_STRENGTH`):

  ==============================================  ==================================
  the entry holds                                  its certificate is
  ==============================================  ==================================
  a verified answer ``revoked``                    refused: ``revoked``
  a problem (no http(s) responder named)           refused: ``ocsp-unavailable``
  no answer, no attempt finished yet               pending: the call waits for the
                                                   first attempt (the timeout, plus a
                                                   second), then is judged again
  no answer (every attempt failed), an answer      refused: ``ocsp-unavailable``
  ``unknown``, or a good answer past its           (fail closed, whatever
  nextUpdate                                       ``--ocsp-unreachable`` says)
  a good answer whose latest refresh failed        ``fail-closed``: refused,
                                                   ``ocsp-unavailable``;
                                                   ``keep-last-good``: admitted (kept)
  a good answer, refreshed as planned              admitted
  ==============================================  ==================================

  ``revoked`` is a credential refusal (:class:`~flwrmtls.auth.authenticator.RefusalReason`:
  final); ``ocsp-unavailable`` is the link's own state, a code of the error catalogue
  (:data:`flwrmtls.wire.refusals.REFUSALS`: UNAVAILABLE, which clients retry).

* A revocation for any reason but certificateHold is final: a later ``good`` answer does not
  undo it (as a CRL's removeFromCRL releases only a hold).
* An answer is valid until its nextUpdate; one without a nextUpdate (the responder says it
  always has news) for two refresh intervals after its thisUpdate.
* An answer never replaces one with a later thisUpdate: an older answer (a replay) is a failed
  attempt. Once a responder URL has echoed the link's nonce, its answers must carry it.
* Refresh: each answer after the refresh interval (``--ocsp-refresh-interval``), and before
  its nextUpdate (at three quarters of its lifetime at the latest); after a failed attempt,
  again after 2 s, doubling to a minute (never later than the refresh interval).
* A certificate not seen in a call for :data:`IDLE` (or three refresh intervals, if longer)
  is no longer asked about and its entry is dropped, but for a final revocation, kept; there
  are at most :data:`MAX_ENTRIES`. Responder load and memory follow the certificates in use.
* Each change of what an entry makes of its certificate is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from flwrmtls.auth.authenticator import AuthenticationFailed, DecisionPending, RefusalReason
from flwrmtls.auth.crlcoverage import OCSP_KIND, CoverageRow, CoverageState
from flwrmtls.auth.ocspcheck import (
    NONCE_BYTES,
    CertStatus,
    OcspAnswer,
    OcspMode,
    OcspSubject,
    ocsp_subjects,
)
from flwrmtls.auth.ocsppolicy import OcspPolicy, Unreachable
from flwrmtls.clock import Clock
from flwrmtls.wire.refusals import Refusal

__all__ = [
    "IDLE",
    "MAX_ENTRIES",
    "OCSP_SCOPE",
    "STANDING_REFUSAL",
    "OcspQuery",
    "OcspStore",
    "Standing",
    "standing_of",
]

log = logging.getLogger("flwrmtls.auth.revocation")

IDLE = timedelta(hours=1)
MAX_ENTRIES = 100_000
OCSP_SCOPE = "OCSP: certificates asked about"
"""The scope of the coverage rows OCSP adds (``supernode revocation``)."""
_FIRST_RETRY = timedelta(seconds=2)
_LAST_RETRY = timedelta(minutes=1)
_SOONEST = timedelta(seconds=1)
_FINAL_HOLD = "certificateHold"


class Standing(enum.StrEnum):
    """What an entry makes of its certificate now."""

    GOOD = "good"
    KEPT = "kept"
    PENDING = "being checked"
    UNAVAILABLE = "without a usable answer"
    REVOKED = "revoked"


STANDING_REFUSAL: dict[Standing, RefusalReason | Refusal | None] = {
    Standing.GOOD: None,
    Standing.KEPT: None,
    Standing.PENDING: None,  # the call waits for the first answer (DecisionPending)
    Standing.UNAVAILABLE: Refusal.OCSP_UNAVAILABLE,  # the link's own state: the catalogue's
    Standing.REVOKED: RefusalReason.REVOKED,
}
"""How a call is refused for each standing."""

_STRENGTH = {
    Standing.GOOD: 0,
    Standing.KEPT: 0,
    Standing.PENDING: 1,
    Standing.UNAVAILABLE: 2,
    Standing.REVOKED: 3,
}
"""Over a chain, the strongest standing decides: a revocation anywhere refuses."""

_CALLS_SEE = {
    Standing.GOOD: "admitted",
    Standing.KEPT: "admitted",
    Standing.PENDING: "pending",
    Standing.UNAVAILABLE: "unavailable",
    Standing.REVOKED: "revoked",
}
"""What a change of standing means to open calls: only a change here judges them again."""


@dataclass(frozen=True, slots=True)
class OcspQuery:
    """One question for a responder, as the refresher asks it."""

    subject: OcspSubject
    url: str
    nonce: bytes
    nonce_required: bool


@dataclass(slots=True, eq=False)
class _Entry:
    subject: OcspSubject
    last_used: datetime
    due: datetime
    answer: OcspAnswer | None = None
    valid_until: datetime | None = None
    failure: str | None = None
    """Why the latest attempt failed; None after a verified answer."""
    failures: int = 0
    attempted: bool = False
    in_flight: bool = False
    ready: asyncio.Event | None = None
    """Set when an attempt finishes, for calls waiting on the first answer."""
    logged: Standing | None = None


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _final(answer: OcspAnswer | None) -> bool:
    return (
        answer is not None and answer.status is CertStatus.REVOKED and answer.reason != _FINAL_HOLD
    )


def standing_of(entry: _Entry, policy: OcspPolicy, now: datetime) -> tuple[Standing, str]:
    """What ``entry`` makes of its certificate at ``now``, and the sentence the caller (and
    the log) is told. The module docstring's table."""
    subject = entry.subject
    what = f"certificate {subject.describe()}"
    answer = entry.answer
    if answer is not None and answer.status is CertStatus.REVOKED:
        reason = answer.reason or "unspecified"
        since = f", since {_utc(answer.revoked_at)}" if answer.revoked_at is not None else ""
        return Standing.REVOKED, (
            f"certificate revoked according to its OCSP responder (serial {subject.serial:x}, "
            f"reason {reason}{since})"
        )
    if subject.problem is not None:
        return Standing.UNAVAILABLE, f"{what}: {subject.problem}"
    if answer is None:
        if not entry.attempted:
            return Standing.PENDING, (
                f"the link is asking the OCSP responder about {what}: try again in a few seconds"
            )
        return Standing.UNAVAILABLE, (
            f"the link has no OCSP answer for {what}: {entry.failure}; it keeps asking"
        )
    if answer.status is CertStatus.UNKNOWN:
        return Standing.UNAVAILABLE, (
            f"the OCSP responder does not know {what} (it answered 'unknown')"
        )
    assert entry.valid_until is not None
    if now > entry.valid_until:
        return Standing.UNAVAILABLE, (
            f"the link's OCSP answer for {what} expired at {_utc(entry.valid_until)} and no "
            f"newer one came ({entry.failure or 'being asked'})"
        )
    if entry.failure is not None:
        if policy.unreachable is Unreachable.FAIL_CLOSED:
            return Standing.UNAVAILABLE, (
                f"the link could not refresh its OCSP answer for {what}: {entry.failure} "
                "(--ocsp-unreachable fail-closed)"
            )
        return Standing.KEPT, (
            f"the last good OCSP answer for {what} is kept until {_utc(entry.valid_until)}: "
            f"{entry.failure}"
        )
    return Standing.GOOD, ""


class OcspStore:
    """The OCSP answers in force per certificate; see the module's rules."""

    def __init__(self, policy: OcspPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._entries: dict[tuple[bytes, int], _Entry] = {}
        self._nonce_responders: set[str] = set()
        """Responder URLs that echoed a nonce: their answers must carry the link's."""
        self._next_due: datetime | None = None
        self.wake: Callable[[], None] = lambda: None
        """Called when a certificate is wanted at once (the refresher sets it)."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def _interval(self) -> timedelta:
        return timedelta(seconds=self.policy.refresh_interval)

    def subjects(self, chain: Sequence[x509.Certificate]) -> tuple[OcspSubject, ...]:
        """What of a verified ``chain`` (leaf first) is asked about."""
        return ocsp_subjects(chain, self.policy.mode, self.policy.url)

    def admit(self, subjects: Sequence[OcspSubject], now: datetime) -> None:
        """A chain was verified: ask about its certificates now, unless already known."""
        for subject in subjects:
            if subject.key not in self._entries:
                self._add(subject, now)

    # --- the per-call check -------------------------------------------------------------------

    def check(self, subjects: Sequence[OcspSubject], now: datetime) -> None:
        """Raise AuthenticationFailed (revoked, ocsp-unavailable) or DecisionPending for the
        strongest standing among ``subjects``; return when every one is admitted."""
        worst: tuple[int, _Entry, Standing, str] | None = None
        for subject in subjects:
            entry = self._entries.get(subject.key)
            if entry is None:
                entry = self._add(subject, now)
            entry.last_used = now
            standing, sentence = standing_of(entry, self.policy, now)
            strength = _STRENGTH[standing]
            if strength and (worst is None or strength > worst[0]):
                worst = (strength, entry, standing, sentence)
        if worst is None:
            return
        _, entry, standing, sentence = worst
        reason = STANDING_REFUSAL[standing]
        if reason is None:
            raise DecisionPending(sentence, self._waiter(entry))
        raise AuthenticationFailed(reason, sentence)

    def _add(self, subject: OcspSubject, now: datetime) -> _Entry:
        if len(self._entries) >= MAX_ENTRIES:
            oldest = min(self._entries.values(), key=lambda e: e.last_used)
            del self._entries[oldest.subject.key]
        entry = _Entry(subject, last_used=now, due=now)
        self._entries[subject.key] = entry
        if subject.url is not None:
            self._due_at(now)
            self.wake()
        return entry

    def _waiter(self, entry: _Entry) -> Callable[[], Awaitable[None]]:
        if entry.ready is None:
            entry.ready = asyncio.Event()
        ready = entry.ready
        bound = self.policy.timeout + 1.0

        async def wait() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), bound)

        return wait

    # --- what the refresher asks, and what it brings back -------------------------------------

    def due(self, now: datetime) -> list[OcspQuery]:
        """The questions to ask now (each entry at most once at a time); idle entries are
        dropped first."""
        idle = max(IDLE, 3 * self._interval)
        queries = []
        self._next_due = None
        for key, entry in list(self._entries.items()):
            if entry.in_flight:
                continue
            if now - entry.last_used > idle:
                if not _final(entry.answer):
                    del self._entries[key]
                continue
            url = entry.subject.url
            if url is None or _final(entry.answer):
                continue
            if entry.due > now:
                self._due_at(entry.due)
                continue
            entry.in_flight = True
            queries.append(
                OcspQuery(
                    entry.subject,
                    url,
                    secrets.token_bytes(NONCE_BYTES),
                    nonce_required=url in self._nonce_responders,
                )
            )
        return queries

    def next_due(self) -> datetime | None:
        """When the next question is due, as far as the store knows (None: nothing to ask)."""
        return self._next_due

    def _due_at(self, moment: datetime) -> None:
        if self._next_due is None or moment < self._next_due:
            self._next_due = moment

    def apply(self, query: OcspQuery, outcome: OcspAnswer | str, now: datetime) -> bool:
        """Take a verified answer (or the failure of an attempt, one line) for ``query``.
        True when it changes how calls of that certificate are judged."""
        entry = self._entries.get(query.subject.key)
        if entry is None:
            return False
        entry.in_flight = False
        before, _ = standing_of(entry, self.policy, now)
        if isinstance(outcome, OcspAnswer):
            outcome = self._take(entry, query, outcome, now)
        if isinstance(outcome, str):
            entry.failure = outcome
            entry.failures += 1
            retry = min(_FIRST_RETRY * 2 ** (entry.failures - 1), _LAST_RETRY, self._interval)
            entry.due = now + max(retry, _SOONEST)
        if not _final(entry.answer):
            self._due_at(entry.due)
        entry.attempted = True
        if entry.ready is not None:
            entry.ready.set()
            entry.ready = None
        after, sentence = standing_of(entry, self.policy, now)
        self._log(entry, after, sentence, query.url)
        return _CALLS_SEE[before] != _CALLS_SEE[after]

    def _take(
        self, entry: _Entry, query: OcspQuery, answer: OcspAnswer, now: datetime
    ) -> OcspAnswer | str:
        """Keep ``answer`` as the entry's, or say why it is not taken."""
        held = entry.answer
        if held is not None and answer.this_update < held.this_update:
            return (
                f"the answer is older than the one the link holds (thisUpdate "
                f"{_utc(answer.this_update)}, before {_utc(held.this_update)}): a replayed answer?"
            )
        if _final(held) and answer.status is not CertStatus.REVOKED:
            assert held is not None
            return (
                f"the responder now answers {answer.status.value!r} for a certificate it "
                f"answered revoked ({held.reason or 'unspecified'}): the revocation stands"
            )
        if answer.nonce_echoed:
            self._nonce_responders.add(query.url)
        lifetime = (
            answer.next_update - answer.this_update
            if answer.next_update is not None
            else 2 * self._interval
        )
        valid_until = answer.this_update + lifetime
        entry.answer, entry.valid_until = answer, valid_until
        entry.failure, entry.failures = None, 0
        refresh = min(now + self._interval, valid_until - lifetime / 4)
        entry.due = max(refresh, now + _SOONEST)
        return answer

    def _log(self, entry: _Entry, standing: Standing, sentence: str, url: str) -> None:
        before, entry.logged = entry.logged, standing
        if before is standing:
            return
        subject = entry.subject
        if standing is Standing.GOOD:
            answer = entry.answer
            assert answer is not None
            assert entry.valid_until is not None
            level = logging.DEBUG if before in (None, Standing.PENDING) else logging.INFO
            log.log(
                level, "OCSP (%s): certificate %s: good (signed by %s, until %s)",
                url, subject.describe(), answer.signer, _utc(entry.valid_until),
            )  # fmt: skip
        elif standing is Standing.REVOKED:
            log.warning("OCSP (%s): %s (issuer %s)", url, sentence, subject.issuer_display)
        elif standing is Standing.KEPT:
            log.warning("OCSP (%s): %s", url, sentence)
        elif standing is Standing.UNAVAILABLE:
            log.error("OCSP (%s): %s: refused until an answer comes", url, sentence)

    # --- what the link tells operators, and when time changes a verdict -----------------------

    def lapsed_between(self, start: datetime, end: datetime) -> bool:
        """Whether a good answer held went past its nextUpdate in [start, end)."""
        return any(
            entry.valid_until is not None
            and start <= entry.valid_until < end
            and entry.answer is not None
            and entry.answer.status is CertStatus.GOOD
            for entry in self._entries.values()
        )

    def coverage(self, now: datetime) -> list[CoverageRow]:
        """One row per issuer whose certificates the link asked about."""
        by_issuer: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            by_issuer.setdefault(entry.subject.issuer_display, []).append(entry)
        return [self._row(issuer, entries, now) for issuer, entries in sorted(by_issuer.items())]

    def _row(self, issuer: str, entries: list[_Entry], now: datetime) -> CoverageRow:
        judged = [(entry, *standing_of(entry, self.policy, now)) for entry in entries]
        counts = Counter(standing for _, standing, _ in judged)
        parts = [f"{len(entries)} certificate(s) asked about"]
        parts += [f"{counts[s]} {s.value}" for s in Standing if counts[s]]
        details = [", ".join(parts)]
        for standing in (Standing.UNAVAILABLE, Standing.KEPT):
            sentence = next((text for _, s, text in judged if s is standing), None)
            if sentence is not None:
                details.append(sentence)
        if self.policy.mode is OcspMode.AIA:
            details.append("its certificates that name no OCSP responder are not checked by OCSP")
        if counts[Standing.UNAVAILABLE]:
            state = CoverageState.FAILING_CLOSED
        elif counts[Standing.KEPT]:
            state = CoverageState.KEPT
        else:
            state = CoverageState.CURRENT
        answers = [entry.answer for entry in entries if entry.answer is not None]
        in_force = [
            entry.valid_until
            for entry, standing, _ in judged
            if standing in (Standing.GOOD, Standing.KEPT) and entry.valid_until is not None
        ]
        return CoverageRow(
            issuer=issuer,
            scope=OCSP_SCOPE,
            kind=OCSP_KIND,
            sources=tuple(sorted({e.subject.url for e in entries if e.subject.url is not None})),
            crl_number=None,
            delta_crl_number=None,
            this_update=max((a.this_update for a in answers), default=None),
            next_update=min(in_force, default=None),
            state=state,
            detail="; ".join(details),
        )
