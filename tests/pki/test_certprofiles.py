"""The extensions, Subjects, SANs and validity of what the CA issues, read back with
cryptography. (test_openssl_verify.py checks that openssl agrees on what they are for.)"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flwrmtls.auth.identity import ROLE_OID
from flwrmtls.errors import InputError
from flwrmtls.pki import (
    CLOCK_SKEW_ALLOWANCE,
    PROFILES,
    CertificateAuthority,
    KeyType,
    LeafOptions,
    ProfileName,
    read_certificate_file,
)
from flwrmtls.pki.files import read_certificates_file
from flwrmtls.testing.clock import FakeClock

ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def _extension(certificate: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return certificate.extensions.get_extension_for_class(kind)


def _key_id(certificate: x509.Certificate) -> bytes:
    return _extension(certificate, x509.SubjectKeyIdentifier).value.digest


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    return _extension(certificate, x509.AuthorityKeyIdentifier).value.key_identifier


def test_profile_table_has_one_row_per_profile() -> None:
    assert set(PROFILES) == set(ProfileName)
    assert all(PROFILES[name].name is name for name in ProfileName)


def test_root_ca_is_a_self_signed_ca_with_pathlen_1(authority: CertificateAuthority) -> None:
    root = authority.root_certificate
    assert root.subject.rfc4514_string() == "CN=test Root CA"
    assert root.issuer == root.subject
    constraints = _extension(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 1
    usage = _extension(root, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert _key_id(root)
    with pytest.raises(x509.ExtensionNotFound):
        _extension(root, x509.AuthorityKeyIdentifier)
    root.verify_directly_issued_by(root)
    assert read_certificate_file(authority.trust_bundle_path) == root


def test_issuing_ca_is_signed_by_the_root_with_pathlen_0(authority: CertificateAuthority) -> None:
    issuing = authority.issuing_certificate
    assert issuing.subject.rfc4514_string() == "CN=test Issuing CA"
    constraints = _extension(issuing, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _extension(issuing, x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert _authority_key_id(issuing) == _key_id(authority.root_certificate)
    issuing.verify_directly_issued_by(authority.root_certificate)
    with pytest.raises(ValueError, match="Issuer certificate subject does not match"):
        authority.root_certificate.verify_directly_issued_by(issuing)


def test_server_certificate_profile(authority: CertificateAuthority) -> None:
    issued = authority.issue_server(
        "link",
        dns_names=["Link.Example.org", "*.fleet.example.org"],
        ip_addresses=["10.1.2.3", "::1"],
    )
    certificate = issued.certificate
    assert certificate.subject.rfc4514_string() == "CN=link"
    assert _extension(certificate, x509.BasicConstraints).critical
    assert not _extension(certificate, x509.BasicConstraints).value.ca
    usage = _extension(certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment  # EC key: no key transport
    assert not usage.value.key_cert_sign
    assert list(_extension(certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    names = _extension(certificate, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org", "*.fleet.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [
        IPv4Address("10.1.2.3"),
        IPv6Address("::1"),
    ]
    assert _authority_key_id(certificate) == _key_id(authority.issuing_certificate)
    certificate.verify_directly_issued_by(authority.issuing_certificate)
    assert issued.serial == certificate.serial_number


def test_server_defaults_to_localhost_and_loopback(authority: CertificateAuthority) -> None:
    names = _extension(
        authority.issue_server("server").certificate, x509.SubjectAlternativeName
    ).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [IPv4Address("127.0.0.1")]


@pytest.mark.parametrize(
    ("dns_names", "ip_addresses", "message"),
    [
        ((), (), "at least one --dns"),
        (("bad name",), (), "--dns 'bad name'"),
        (("exämple.org",), (), "IDNA"),
        ((), ("999.1.1.1",), "--ip '999.1.1.1'"),
    ],
)
def test_server_names_are_validated(
    authority: CertificateAuthority,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    message: str,
) -> None:
    with pytest.raises(InputError, match=message):
        authority.issue_server("server", dns_names=dns_names, ip_addresses=ip_addresses)
    assert not (authority.directory / "server.key").exists()


def test_node_certificate_profile(authority: CertificateAuthority) -> None:
    certificate = authority.issue_node(
        "node-1", organization="Hospital A", organizational_unit="Radiology"
    ).certificate
    assert certificate.subject.rfc4514_string() == "CN=node-1,OU=Radiology,O=Hospital A"
    assert [attribute.oid for attribute in certificate.subject] == [
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.COMMON_NAME,
    ]
    assert not _extension(certificate, x509.BasicConstraints).value.ca
    assert _extension(certificate, x509.KeyUsage).value.digital_signature
    assert list(_extension(certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    with pytest.raises(x509.ExtensionNotFound):  # CN-only: no SAN without a SPIFFE ID
        _extension(certificate, x509.SubjectAlternativeName)
    assert _authority_key_id(certificate) == _key_id(authority.issuing_certificate)


def test_node_common_name_overrides_the_file_name(authority: CertificateAuthority) -> None:
    issued = authority.issue_node("site-a", common_name="node-7")
    assert issued.certificate.subject.rfc4514_string() == "CN=node-7"
    assert issued.chain_path == authority.directory / "site-a.pem"


def test_node_spiffe_id_is_the_single_uri_san(authority: CertificateAuthority) -> None:
    certificate = authority.issue_node(
        "node-1", spiffe_id="spiffe://example.org/node/1"
    ).certificate
    names = _extension(certificate, x509.SubjectAlternativeName).value
    assert list(names) == [x509.UniformResourceIdentifier("spiffe://example.org/node/1")]


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "https://example.org/node",
        "spiffe://example.org/node/",
        "spiffe://Example.org/x",
        "spiffe://",
    ],
)
def test_invalid_spiffe_ids_are_refused(authority: CertificateAuthority, spiffe_id: str) -> None:
    with pytest.raises(InputError, match="--spiffe-id"):
        authority.issue_node("node-1", spiffe_id=spiffe_id)


def test_cli_certificate_carries_the_role_attribute(authority: CertificateAuthority) -> None:
    certificate = authority.issue_cli("alice", role="operator", organization="Lab").certificate
    assert [attribute.oid for attribute in certificate.subject] == [
        NameOID.ORGANIZATION_NAME,
        NameOID.COMMON_NAME,
        ROLE_OID,
    ]
    (role,) = certificate.subject.get_attributes_for_oid(ROLE_OID)
    assert role.value == "operator"
    assert b"\x0c\x08operator" in certificate.subject.public_bytes()  # UTF8String (tag 12)
    assert list(_extension(certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    with pytest.raises(x509.ExtensionNotFound):
        _extension(certificate, x509.SubjectAlternativeName)


@pytest.mark.parametrize("role", ["admin", "Operator", ""])
def test_unknown_cli_roles_are_refused(authority: CertificateAuthority, role: str) -> None:
    with pytest.raises(InputError, match="--role"):
        authority.issue_cli("alice", role=role)
    assert not (authority.directory / "alice.pem").exists()


def test_extended_key_usage_override_builds_bad_certificates(
    authority: CertificateAuthority,
) -> None:
    server_only = authority.issue_node(
        "wrong-eku", options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    ).certificate
    assert list(_extension(server_only, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    no_eku = authority.issue_node("no-eku", options=LeafOptions(extended_key_usages=[])).certificate
    with pytest.raises(x509.ExtensionNotFound):
        _extension(no_eku, x509.ExtendedKeyUsage)


def test_rsa_leaves_also_allow_key_encipherment(tmp_path: Path) -> None:
    rsa_authority = CertificateAuthority.create(tmp_path / "rsa", key_type=KeyType.RSA)
    server = rsa_authority.issue_server("server").certificate
    assert isinstance(server.public_key(), rsa.RSAPublicKey)
    usage = _extension(server, x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    ec_leaf = rsa_authority.issue_node(
        "node-ec", options=LeafOptions(key_type=KeyType.EC)
    ).certificate
    assert isinstance(ec_leaf.public_key(), ec.EllipticCurvePublicKey)
    assert not _extension(ec_leaf, x509.KeyUsage).value.key_encipherment


def test_chain_file_is_leaf_then_issuing_ca(authority: CertificateAuthority) -> None:
    issued = authority.issue_node("node-1")
    assert read_certificates_file(issued.chain_path) == [
        issued.certificate,
        authority.issuing_certificate,
    ]


def test_serials_are_random_and_distinct(authority: CertificateAuthority) -> None:
    serials = {authority.issue_node(f"node-{index}").serial for index in range(5)}
    assert len(serials) == 5
    assert all(serial.bit_length() > 64 for serial in serials)


def test_validity_window_follows_the_clock(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock
) -> None:
    created_at = fake_clock.now()
    fake_clock.advance(3600)
    now = created_at + timedelta(hours=1)
    certificate = fake_clock_authority.issue_node(
        "node-1", options=LeafOptions(days=30)
    ).certificate
    assert certificate.not_valid_before_utc == now - CLOCK_SKEW_ALLOWANCE
    assert certificate.not_valid_after_utc == now + timedelta(days=30)
    root = fake_clock_authority.root_certificate
    assert root.not_valid_before_utc == created_at - CLOCK_SKEW_ALLOWANCE
    assert root.not_valid_after_utc == created_at + timedelta(days=3650)


def test_validity_overrides_build_expired_and_future_certificates(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock
) -> None:
    now = fake_clock.now()
    expired = fake_clock_authority.issue_node(
        "expired",
        options=LeafOptions(not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)),
    ).certificate
    assert expired.not_valid_after_utc == now - timedelta(days=1)
    naive_future = (now + timedelta(days=100)).replace(tzinfo=None)  # naive: taken as UTC
    future = fake_clock_authority.issue_node(
        "future", options=LeafOptions(not_before=naive_future)
    ).certificate
    assert future.not_valid_before_utc == now + timedelta(days=100)
    assert future.not_valid_after_utc == now + timedelta(days=365)


def test_impossible_validity_windows_are_refused(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock
) -> None:
    now = fake_clock.now()
    with pytest.raises(InputError, match="before it is valid"):
        fake_clock_authority.issue_node(
            "node", options=LeafOptions(not_before=now + timedelta(days=400))
        )
    with pytest.raises(InputError, match="outlive the issuing CA"):
        fake_clock_authority.issue_node("node", options=LeafOptions(days=4000))
    with pytest.raises(InputError, match="--days 1 or more"):
        fake_clock_authority.issue_node("node", options=LeafOptions(days=0))
    assert not (fake_clock_authority.directory / "node.pem").exists()


def test_a_node_certificate_cannot_carry_a_cli_role_as_its_ou(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "ca")
    for role in ("operator", "user"):
        with pytest.raises(InputError, match="is a CLI role name"):
            authority.issue_node("node-x", organizational_unit=role)
    authority.issue_node("node-y", organizational_unit="site-a")  # control
