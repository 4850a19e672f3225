"""CRL files: PEM or DER, one file or a directory; newest CRL per issuer wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flwrmtls.auth.authenticator import AuthenticationFailed, RefusalReason
from flwrmtls.auth.refusallog import RefusalLog
from flwrmtls.auth.revocation import IssuedBy, RevocationStore
from flwrmtls.errors import InputError
from flwrmtls.pki import CertificateAuthority
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki


def leaf(pki: TestPki, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pki.paths(name)[0].read_bytes())[0]


def test_der_crl_in_a_directory_revokes(fresh_pki: TestPki, tmp_path: Path) -> None:
    fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-1")[0])
    crl = x509.load_pem_x509_crl(fresh_pki.crl_path.read_bytes())
    directory = tmp_path / "crls"
    directory.mkdir()
    (directory / "issuing.der").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    store = RevocationStore(directory)
    issuer = fresh_pki.ca.issuing_certificate
    now = crl.last_update_utc
    with pytest.raises(AuthenticationFailed) as caught:
        store.check(IssuedBy.of(leaf(fresh_pki, "node-1"), issuer), now)
    assert caught.value.reason is RefusalReason.REVOKED
    store.check(IssuedBy.of(leaf(fresh_pki, "node-2"), issuer), now)  # control


def test_several_crls_in_one_pem_and_the_newest_wins(fresh_pki: TestPki, tmp_path: Path) -> None:
    older = fresh_pki.crl_path.read_bytes()  # empty CRL, lower CRL number
    fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-2")[0])
    newer = fresh_pki.crl_path.read_bytes()
    other = CertificateAuthority.create(tmp_path / "other", name="other")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(newer + other.crl_path.read_bytes() + older)
    store = RevocationStore(bundle)
    assert len(store.issuers) == 2
    with pytest.raises(AuthenticationFailed):
        store.check(
            IssuedBy.of(leaf(fresh_pki, "node-2"), fresh_pki.ca.issuing_certificate),
            x509.load_pem_x509_crl(newer).last_update_utc,
        )


def test_missing_or_garbage_crl_file_is_an_input_error(tmp_path: Path, pki: TestPki) -> None:
    with pytest.raises(InputError, match="does not exist"):
        RevocationStore(tmp_path / "absent.pem")
    with pytest.raises(InputError, match="is not a CRL"):
        RevocationStore(pki.paths("node-1")[0])


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    refusals = RefusalLog(clock, interval=600)
    error = AuthenticationFailed(RefusalReason.REVOKED, "certificate revoked", "ab" * 32)
    with caplog.at_level(logging.WARNING, logger="flwrmtls.link.auth"):
        for _ in range(5):
            refusals.record("ipv4:10.0.0.1:5000", "/m", error)
        assert len(caplog.records) == 1
        assert "certificate sha256:" + "ab" * 32 in caplog.records[0].getMessage()
        other = AuthenticationFailed(RefusalReason.EXPIRED, "certificate expired", "ab" * 32)
        refusals.record("ipv4:10.0.0.1:5000", "/m", other)  # another reason: logged
        assert len(caplog.records) == 2
        clock.advance(601)
        refusals.record("ipv4:10.0.0.1:5000", "/m", error)
        assert len(caplog.records) == 3
        assert "(4 more since last report)" in caplog.records[2].getMessage()
