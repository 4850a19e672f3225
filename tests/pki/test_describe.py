"""``describe_certificate``: what ``flwrmtls ca show`` prints, and the identity the link would
map a certificate to (or why it would refuse it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flwrmtls.auth.identity import IdentitySource, identity_from_certificate
from flwrmtls.pki import CertificateAuthority, KeyType, describe_certificate


def test_node_description_matches_the_links_identity(
    authority: CertificateAuthority, other_authority: CertificateAuthority
) -> None:
    certificate = authority.issue_node(
        "node-1", organization="Hospital A", spiffe_id="spiffe://example.org/n1"
    ).certificate
    description = describe_certificate(certificate, issuing_ca=authority.issuing_certificate)
    identity = identity_from_certificate(certificate, IdentitySource.SUBJECT)
    assert description.subject == "CN=node-1,O=Hospital A"
    assert description.issuer == "CN=test Issuing CA"
    assert description.serial_hex == f"{certificate.serial_number:#x}"
    assert description.key_type == "EC P-256 (secp256r1)"
    assert not description.is_ca
    assert description.extended_key_usages == ("clientAuth",)
    assert description.subject_alternative_names == ("URI:spiffe://example.org/n1",)
    assert description.identity == identity.value
    assert description.node_id == identity.node_id
    assert description.kind == "node"
    assert description.identity_error is None
    assert description.issued_by_ca is True
    assert describe_certificate(certificate).issued_by_ca is None
    foreign = describe_certificate(certificate, issuing_ca=other_authority.issuing_certificate)
    assert foreign.issued_by_ca is False

    spiffe = describe_certificate(certificate, IdentitySource.SPIFFE)
    assert spiffe.identity == "spiffe://example.org/n1"
    assert spiffe.node_id == identity_from_certificate(certificate, IdentitySource.SPIFFE).node_id
    document = json.loads(json.dumps(spiffe.to_json()))
    assert document["serial"] == description.serial_hex
    assert document["identity_source"] == "spiffe"


def test_cli_and_ca_descriptions(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "rsa", key_type=KeyType.RSA)
    cli = describe_certificate(authority.issue_cli("bob", role="user").certificate)
    assert cli.kind == "user"
    assert cli.subject == "role=user,CN=bob"
    assert cli.key_type == "RSA 2048"
    root = describe_certificate(authority.root_certificate)
    assert root.is_ca
    assert root.extended_key_usages == ()


def _self_signed(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_ambiguous_certificates_are_described_with_the_reason() -> None:
    two_common_names = _self_signed(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "node-1"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        )
    )
    description = describe_certificate(two_common_names)
    assert description.identity is None
    assert description.node_id is None
    assert description.kind is None
    assert description.identity_error == "certificate Subject has 2 CN values"
    assert description.to_json()["identity_error"] == description.identity_error
