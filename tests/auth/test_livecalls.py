"""The decision which open calls are refused now, as pure calls over values.

The authenticators here are the real ones (mTLS with a CRL, DenyUnregistered), over a test PKI;
the clock is the ``now`` passed in. The same decision ends real calls through a real link in
tests/e2e/test_open_calls.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    RefusalReason,
)
from flwrmtls.auth.compose import DenyUnregistered
from flwrmtls.auth.livecalls import LiveCall, LiveCalls, expired_calls, refused_calls
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.revocation import RevocationStore
from flwrmtls.pki import LeafOptions
from flwrmtls.testing.pki import TestPki, make_test_pki


def presented(pki: TestPki, name: str) -> CallCredentials:
    """What a node's connection presents: its leaf, then its intermediates."""
    pem = pki.paths(name)[0].read_bytes()
    marker = b"-----END CERTIFICATE-----\n"
    leaf, _, rest = pem.partition(marker)
    return CallCredentials(
        "/flwrmtls.proto.Fleet/PullMessages", "ipv4:10.0.0.7:1", leaf + marker, rest or None
    )


class Ended:
    def __init__(self) -> None:
        self.refusals: list[AuthenticationFailed] = []

    def __call__(self, refusal: AuthenticationFailed) -> None:
        self.refusals.append(refusal)


def live(authenticator: Authenticator, credentials: CallCredentials, now: datetime) -> LiveCall:
    principal = authenticator.authenticate(credentials, now)
    return LiveCall(credentials, principal, lambda: authenticator, Ended())


def test_a_revoked_certificates_open_call_is_refused_and_the_others_are_not(
    tmp_path: Path,
) -> None:
    pki = make_test_pki(tmp_path)
    revocations = RevocationStore(pki.crl_path)
    auth = MtlsAuthenticator([pki.ca.root_certificate], revocations=revocations)
    now = datetime.now(UTC)
    kept, revoked = (live(auth, presented(pki, n), now) for n in ("node-1", "node-2"))
    assert refused_calls([kept, revoked], now) == []  # control: nothing changed yet
    pki.ca.revoke(certificate_file=pki.paths("node-2")[0])
    assert revocations.refresh()
    [(call, refusal)] = refused_calls([kept, revoked], now)
    assert call is revoked
    assert refusal.reason is RefusalReason.REVOKED


def test_an_unregistered_node_is_refused_by_whatever_admitted_it(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    unregistered: set[int] = set()
    auth = DenyUnregistered(
        MtlsAuthenticator([pki.ca.root_certificate]), lambda node_id: node_id in unregistered
    )
    now = datetime.now(UTC)
    kept, removed = (live(auth, presented(pki, n), now) for n in ("node-1", "node-2"))
    assert removed.principal.node_id is not None
    unregistered.add(removed.principal.node_id)
    [(call, refusal)] = refused_calls([kept, removed], now)
    assert call is removed
    assert refusal.reason is RefusalReason.NODE_UNREGISTERED


def test_expiry_is_found_by_comparison_and_refused_by_the_authenticator(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    now = datetime.now(UTC)
    short = pki.ca.issue_node(
        "short",
        options=LeafOptions(
            not_before=now - timedelta(hours=1), not_after=now + timedelta(minutes=5)
        ),
    )
    auth = MtlsAuthenticator([pki.ca.root_certificate])
    kept = live(auth, presented(pki, "node-1"), now)
    expiring = live(auth, presented(pki, "short"), now)
    assert expired_calls([kept, expiring], now) == []
    later = short.certificate.not_valid_after_utc + timedelta(seconds=1)
    assert expired_calls([kept, expiring], later) == [expiring]
    [(_, refusal)] = refused_calls(expired_calls([kept, expiring], later), later)
    assert refusal.reason is RefusalReason.EXPIRED


def test_the_registry_ends_each_refused_call_once_and_forgets_it(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    revocations = RevocationStore(pki.crl_path)
    auth = MtlsAuthenticator([pki.ca.root_certificate], revocations=revocations)
    now = datetime.now(UTC)
    kept, revoked = (live(auth, presented(pki, n), now) for n in ("node-1", "node-2"))
    calls = LiveCalls()
    calls.add(kept)
    calls.add(revoked)
    assert calls.recheck(now) == 0
    pki.ca.revoke(certificate_file=pki.paths("node-2")[0])
    revocations.refresh()
    assert calls.recheck(now) == 1
    assert calls.recheck(now) == 0  # ended once, then no longer in the registry
    assert len(calls) == 1
    assert isinstance(revoked.end, Ended)
    assert [r.reason for r in revoked.end.refusals] == [RefusalReason.REVOKED]
    assert isinstance(kept.end, Ended)
    assert kept.end.refusals == []
    calls.discard(kept)  # its handler ended: memory is bounded by the calls open
    assert len(calls) == 0


def test_an_authenticator_that_breaks_refuses_nothing(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    auth = MtlsAuthenticator([pki.ca.root_certificate])
    now = datetime.now(UTC)
    call = live(auth, presented(pki, "node-1"), now)

    def broken() -> Authenticator:
        raise RuntimeError("the database is unreadable")

    call.authenticator = broken
    assert refused_calls([call], now) == []
