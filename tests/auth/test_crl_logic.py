"""The pure CRL logic: one CRL judged (crlfile), what is in force per issuer (crlset), and the
store's keep-last-good and transitions (revocation), on CRLs signed by the test CA's keys."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.auth.authenticator import AuthenticationFailed, RefusalReason
from flwrmtls.auth.crlcoverage import CoverageState
from flwrmtls.auth.crlfile import (
    ALL_CERTIFICATES,
    CLOCK_SKEW,
    CrlNotYetValid,
    CrlRefused,
    CrlScope,
    ParsedCrl,
    parse_crl_file,
)
from flwrmtls.auth.crlset import crls_in_force
from flwrmtls.auth.revocation import IssuedBy, RevocationStore
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki
from tests.auth.crl_builders import Ca, idp, issuing_ca, make_crl, uri, write_crl

NOW = datetime.now(UTC).replace(microsecond=0)
HOLD = x509.ReasonFlags.certificate_hold
REMOVE = x509.ReasonFlags.remove_from_crl
KEY_COMPROMISE = x509.ReasonFlags.key_compromise


@pytest.fixture
def ca(pki: TestPki) -> Ca:
    return issuing_ca(pki)


def parsed(tmp_path: Path, crl: x509.CertificateRevocationList, now: datetime = NOW) -> ParsedCrl:
    path = write_crl(tmp_path / f"{id(crl)}.crl", crl)
    (only,) = parse_crl_file(path, now)
    return only


# --- one CRL ----------------------------------------------------------------------------------

UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"\x05\x00")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"extensions": [(UNKNOWN, True)]}, "unknown critical extension 1.3.6.1.4.1.55555.9"),
        (
            {"revoked": [(7, None)], "entry_extensions": [(UNKNOWN, True)]},
            r"entry \(serial 7\) with an unknown critical extension",
        ),
        (
            {
                "revoked": [(7, None)],
                "entry_extensions": [(x509.CertificateIssuer([x509.DNSName("other.test")]), True)],
            },
            "names other issuers in its entries",
        ),
        ({"scope": idp(indirect=True)}, "is an indirect CRL"),
        ({"scope": idp(only_some_reasons=frozenset({KEY_COMPROMISE}))}, "only some revocation"),
        ({"base": 3, "number": 3}, "is not above its base"),
        ({"base": 3, "number": None}, "is not above its base"),
        ({"this_update": NOW + CLOCK_SKEW + timedelta(minutes=1)}, "issued in the future"),
    ],
)
def test_a_crl_the_link_cannot_honour_is_refused_with_one_line(
    tmp_path: Path, ca: Ca, arguments: dict[str, object], message: str
) -> None:
    arguments = {"number": 1, **arguments}
    crl = make_crl(ca, **arguments)  # type: ignore[arg-type]
    with pytest.raises(CrlRefused, match=message) as refused:
        parsed(tmp_path, crl)
    assert "\n" not in str(refused.value)
    assert str(tmp_path) in str(refused.value)


def test_attribute_certificate_and_relative_name_scopes_are_refused(tmp_path: Path, ca: Ca) -> None:
    attributes = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=True,
    )
    with pytest.raises(CrlRefused, match="onlyContainsAttributeCerts"):
        parsed(tmp_path, make_crl(ca, number=1, scope=attributes))
    relative = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=x509.RelativeDistinguishedName(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, "partition 1")]
        ),
        only_contains_user_certs=False,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    with pytest.raises(CrlRefused, match="nameRelativeToCRLIssuer"):
        parsed(tmp_path, make_crl(ca, number=1, scope=relative))


def test_what_the_link_understands_is_taken(tmp_path: Path, ca: Ca) -> None:
    # Controls: a non-critical unknown extension, a thisUpdate within the clock skew, a scope.
    crl = parsed(
        tmp_path,
        make_crl(
            ca,
            number=4,
            base=3,
            scope=idp("http://crl.test/a", only_user=True),
            revoked=[(7, HOLD), (8, REMOVE), (9, KEY_COMPROMISE)],
            this_update=NOW + CLOCK_SKEW - timedelta(seconds=1),
            extensions=[(UNKNOWN, False)],
        ),
    )
    assert (crl.number, crl.base_number, crl.is_delta) == (4, 3, True)
    assert crl.scope == CrlScope(only_user=True, names=frozenset({uri("http://crl.test/a")}))
    assert {s: r.reason for s, r in crl.revoked.items()} == {
        7: "certificateHold",
        9: "keyCompromise",
    }
    assert crl.released == frozenset({8})


def test_a_crl_issued_in_the_future_is_marked_for_retry(tmp_path: Path, ca: Ca) -> None:
    with pytest.raises(CrlNotYetValid):
        parsed(tmp_path, make_crl(ca, number=1, this_update=NOW + timedelta(hours=1)))


# --- what is in force per issuer --------------------------------------------------------------


def test_the_highest_complete_crl_wins_and_a_delta_applies_on_it(tmp_path: Path, ca: Ca) -> None:
    older = parsed(tmp_path, make_crl(ca, number=1, revoked=[(1, None)]))
    base = parsed(tmp_path, make_crl(ca, number=2, revoked=[(2, HOLD), (3, None)]))
    old_delta = parsed(tmp_path, make_crl(ca, number=2, base=1, revoked=[(99, None)]))
    delta = parsed(tmp_path, make_crl(ca, number=3, base=2, revoked=[(2, REMOVE), (4, None)]))
    (issuer,) = crls_in_force([delta, older, old_delta, base]).values()
    (group,) = issuer.groups
    assert group.complete is base
    assert group.delta is delta
    assert group.failure is None
    assert set(group.revoked) == {3, 4}  # 2 was on hold and released; 1 and 99 are older news


def test_a_delta_never_stands_in_for_a_complete_crl(tmp_path: Path, ca: Ca) -> None:
    delta = parsed(tmp_path, make_crl(ca, number=3, base=2))
    (issuer,) = crls_in_force([delta]).values()
    assert issuer.groups[0].failure is not None
    assert "needs its base CRL #2" in issuer.groups[0].failure
    older_base = parsed(tmp_path, make_crl(ca, number=1))
    (issuer,) = crls_in_force([delta, older_base]).values()
    assert issuer.groups[0].failure is not None
    assert "needs base CRL #2 or newer" in issuer.groups[0].failure
    newer_base = parsed(tmp_path, make_crl(ca, number=2))  # control: the base it names
    (issuer,) = crls_in_force([delta, older_base, newer_base]).values()
    assert issuer.groups[0].failure is None


def test_remove_from_crl_releases_only_a_hold(tmp_path: Path, ca: Ca) -> None:
    base = parsed(tmp_path, make_crl(ca, number=1, revoked=[(1, HOLD), (2, KEY_COMPROMISE)]))
    delta = parsed(tmp_path, make_crl(ca, number=2, base=1, revoked=[(1, REMOVE), (2, REMOVE)]))
    (issuer,) = crls_in_force([base, delta]).values()
    assert set(issuer.groups[0].revoked) == {2}


def test_a_group_is_valid_until_its_earliest_next_update(tmp_path: Path, ca: Ca) -> None:
    base = parsed(tmp_path, make_crl(ca, number=1, next_update=NOW + timedelta(days=7)))
    delta = parsed(tmp_path, make_crl(ca, number=2, base=1, next_update=NOW + timedelta(hours=1)))
    (issuer,) = crls_in_force([base, delta]).values()
    assert issuer.groups[0].next_update == NOW + timedelta(hours=1)


def test_partitions_are_kept_apart_and_cover_by_scope(tmp_path: Path, ca: Ca) -> None:
    p1, p2 = "http://crl.test/p1", "http://crl.test/p2"
    crls = [
        parsed(tmp_path, make_crl(ca, number=5, scope=idp(p1), revoked=[(1, None)])),
        parsed(tmp_path, make_crl(ca, number=2, scope=idp(p2), revoked=[(2, None)])),
        parsed(tmp_path, make_crl(ca, number=1, scope=idp(only_ca=True), revoked=[(3, None)])),
    ]
    (issuer,) = crls_in_force(crls).values()
    assert len(issuer.groups) == 3
    in_p1 = issuer.covering(False, frozenset({uri(p1)}))
    assert [set(g.revoked) for g in in_p1] == [{1}]
    assert [set(g.revoked) for g in issuer.covering(True, frozenset())] == [{3}]
    assert issuer.covering(False, frozenset({uri("http://crl.test/p3")})) == ()
    assert issuer.covering(False, frozenset()) == ()
    assert ALL_CERTIFICATES.covers(True, frozenset()) is True


# --- the store: keep the last good, retry the future, log transitions once --------------------


def link_of(pki: TestPki, name: str) -> IssuedBy:
    leaf = x509.load_pem_x509_certificates(pki.paths(name)[0].read_bytes())[0]
    return IssuedBy.of(leaf, pki.ca.issuing_certificate)


def test_a_crl_from_the_future_is_taken_once_the_clock_catches_up(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    node_1 = link_of(fresh_pki, "node-1")
    clock = FakeClock(NOW)
    path = write_crl(tmp_path / "crls" / "issuing.crl", make_crl(ca, number=1))
    store = RevocationStore(path.parent, clock)
    store.check(node_1, clock.now())
    write_crl(
        path,
        make_crl(
            ca, number=2, revoked=[(node_1.serial, None)], this_update=NOW + timedelta(hours=1)
        ),
    )
    assert store.refresh() is False  # refused for now; the last good CRL stays
    store.check(node_1, clock.now())
    clock.advance(3600)
    assert store.refresh() is True  # the same file, re-read once the clock caught up
    with pytest.raises(AuthenticationFailed) as caught:
        store.check(node_1, clock.now())
    assert caught.value.reason is RefusalReason.REVOKED


def test_transitions_are_logged_once(
    tmp_path: Path, fresh_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    ca = issuing_ca(fresh_pki)
    clock = FakeClock(NOW)
    path = write_crl(
        tmp_path / "crls" / "issuing.crl",
        make_crl(ca, number=1, this_update=NOW, next_update=NOW + timedelta(hours=1)),
    )
    store = RevocationStore(path.parent, clock)
    with caplog.at_level(logging.INFO, logger="flwrmtls.auth.revocation"):
        path.unlink()
        for _ in range(5):
            store.refresh()
        clock.advance(7200)
        for _ in range(5):
            store.refresh()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("vanished; its CRLs stay in force" in m for m in messages) == 1
    assert sum(" kept until " in m for m in messages) == 1
    assert sum("is expired" in m for m in messages) == 1
    (row,) = [r for r in store.coverage(clock.now()) if r.state is not CoverageState.NOT_CHECKED]
    assert row.state is CoverageState.EXPIRED
    with pytest.raises(AuthenticationFailed) as caught:
        store.check(link_of(fresh_pki, "node-2"), clock.now())
    assert caught.value.reason is RefusalReason.CRL_UNAVAILABLE


def test_a_new_file_that_is_refused_at_reload_leaves_the_rest_in_force(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    node_1 = link_of(fresh_pki, "node-1")
    crls = tmp_path / "crls"
    write_crl(crls / "issuing.crl", make_crl(ca, number=1, revoked=[(node_1.serial, None)]))
    store = RevocationStore(crls, FakeClock(NOW))
    write_crl(crls / "extra.crl", make_crl(ca, number=9, extensions=[(UNKNOWN, True)]))
    assert store.refresh() is False
    with pytest.raises(AuthenticationFailed, match="certificate revoked"):
        store.check(node_1, NOW)
    store.check(link_of(fresh_pki, "node-2"), NOW)  # control
