"""Revocation: the record, the CRL it produces, and openssl enforcing that CRL."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.errors import InputError
from flwrmtls.pki import CertificateAuthority, RevocationReason
from flwrmtls.pki.crl import parse_serial
from flwrmtls.testing.clock import FakeClock

from .openssl_tools import openssl, openssl_verify


def _load_crl(authority: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(authority.crl_path.read_bytes())


def _openssl_hex(serial: int) -> str:
    """A serial as ``openssl crl -text`` prints it: upper-case hex, an even number of digits."""
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_init_writes_an_empty_signed_crl(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock
) -> None:
    crl = _load_crl(fake_clock_authority)
    assert len(crl) == 0
    assert crl.issuer == fake_clock_authority.issuing_certificate.subject
    assert crl.is_signature_valid(fake_clock_authority.issuing_certificate.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(fake_clock_authority.root_certificate.public_key())  # type: ignore[arg-type]
    assert crl.last_update_utc == fake_clock.now()
    assert crl.next_update_utc == fake_clock.now() + timedelta(days=7)
    assert _crl_number(crl) == 1
    issuer_key_id = fake_clock_authority.issuing_certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer_key_id
    text = openssl("crl", "-in", fake_clock_authority.crl_path, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert "No Revoked Certificates" in text.stdout


def test_revoked_certificate_is_listed_and_refused_by_openssl(
    authority: CertificateAuthority,
) -> None:
    revoked = authority.issue_node("node-1", organization="Hospital A")
    still_good = authority.issue_node("node-2", organization="Hospital B")
    serial = authority.revoke(
        certificate_file=revoked.chain_path, reason=RevocationReason.KEY_COMPROMISE
    )
    assert serial == revoked.serial

    text = openssl("crl", "-in", authority.crl_path, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert f"Serial Number: {_openssl_hex(serial)}\n" in text.stdout
    assert "Key Compromise" in text.stdout
    assert _openssl_hex(still_good.serial) not in text.stdout

    def verify(chain_path: Path) -> subprocess.CompletedProcess[str]:
        return openssl_verify(
            authority.trust_bundle_path,
            authority.files.issuing_certificate,
            chain_path,
            purpose="sslclient",
            crl=authority.crl_path,
        )

    refused = verify(revoked.chain_path)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    accepted = verify(still_good.chain_path)  # negative control: same CRL, not revoked
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_revoke_by_serial_without_reason_and_crl_numbers_increase(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock
) -> None:
    fake_clock.advance(60)
    assert fake_clock_authority.revoke(serial=0x1F2E) == 0x1F2E
    crl = _load_crl(fake_clock_authority)
    assert _crl_number(crl) == 2
    entry = crl.get_revoked_certificate_by_serial_number(0x1F2E)
    assert entry is not None
    assert entry.revocation_date_utc == fake_clock.now()
    with pytest.raises(x509.ExtensionNotFound):  # unspecified: no CRLReason (RFC 5280 5.3.1)
        entry.extensions.get_extension_for_class(x509.CRLReason)

    fake_clock.advance(60)
    fake_clock_authority.write_crl(days=30)
    renewed = _load_crl(fake_clock_authority)
    assert _crl_number(renewed) == 3
    assert renewed.next_update_utc == fake_clock.now() + timedelta(days=30)
    assert renewed.get_revoked_certificate_by_serial_number(0x1F2E) is not None
    record = json.loads(fake_clock_authority.files.revocation_record.read_text())
    assert record["crl_number"] == 3
    assert record["revoked"] == [
        {
            "serial": "1f2e",
            "revoked_at": entry.revocation_date_utc.isoformat(),
            "reason": "unspecified",
        }
    ]


@pytest.mark.parametrize("reason", list(RevocationReason))
def test_every_reason_reaches_the_crl(
    authority: CertificateAuthority, reason: RevocationReason
) -> None:
    authority.revoke(serial=1234, reason=reason)
    entry = _load_crl(authority).get_revoked_certificate_by_serial_number(1234)
    assert entry is not None
    if reason is RevocationReason.UNSPECIFIED:
        assert len(entry.extensions) == 0
    else:
        crl_reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert crl_reason is reason.reason_flag
        assert crl_reason.value == reason.value  # RFC 5280 names on both sides


def test_a_serial_is_revoked_only_once(authority: CertificateAuthority) -> None:
    authority.revoke(serial=77, reason=RevocationReason.SUPERSEDED)
    before = authority.files.revocation_record.read_bytes()
    crl_before = authority.crl_path.read_bytes()
    with pytest.raises(InputError, match="already revoked"):
        authority.revoke(serial=77, reason=RevocationReason.KEY_COMPROMISE)
    assert authority.files.revocation_record.read_bytes() == before
    assert authority.crl_path.read_bytes() == crl_before


def test_revoke_needs_exactly_one_target(authority: CertificateAuthority) -> None:
    node = authority.issue_node("node-1")
    with pytest.raises(InputError, match="exactly one"):
        authority.revoke()
    with pytest.raises(InputError, match="exactly one"):
        authority.revoke(certificate_file=node.chain_path, serial=node.serial)
    with pytest.raises(InputError, match="positive"):
        authority.revoke(serial=0)


def test_revoking_another_cas_certificate_is_refused(
    authority: CertificateAuthority, other_authority: CertificateAuthority
) -> None:
    foreign = other_authority.issue_node("node-1")
    with pytest.raises(InputError, match="was not issued by the CA"):
        authority.revoke(certificate_file=foreign.chain_path)
    assert len(_load_crl(authority)) == 0


def test_a_lost_or_damaged_record_is_never_treated_as_empty(
    authority: CertificateAuthority,
) -> None:
    authority.revoke(serial=5)
    crl_before = authority.crl_path.read_bytes()
    authority.files.revocation_record.write_text("{not json")
    with pytest.raises(InputError, match="cannot read the CA's revocation record"):
        authority.write_crl()
    authority.files.revocation_record.write_text('{"format": "flwrmtls-revocations/1"}')
    with pytest.raises(InputError, match="damaged"):
        authority.revoke(serial=6)
    authority.files.revocation_record.unlink()
    with pytest.raises(InputError, match="missing"):
        authority.write_crl()
    assert authority.crl_path.read_bytes() == crl_before


def test_crl_days_must_be_positive(authority: CertificateAuthority) -> None:
    with pytest.raises(InputError, match="a CRL must be valid for 1 to 365 days"):
        authority.write_crl(days=0)


@pytest.mark.parametrize(
    ("text", "serial"),
    [("0x1f2e", 0x1F2E), ("0X1F2E", 0x1F2E), ("1F:2E", 0x1F2E), ("1f2e", 0x1F2E), ("1234", 1234)],
)
def test_parse_serial(text: str, serial: int) -> None:
    assert parse_serial(text) == serial


@pytest.mark.parametrize("text", ["", "0x", "zz", "-5", "0", "12 34"])
def test_parse_serial_refuses_non_serials(text: str) -> None:
    with pytest.raises(InputError, match="--serial"):
        parse_serial(text)
