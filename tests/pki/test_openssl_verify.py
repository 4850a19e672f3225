"""openssl, an independent verifier, accepts each certificate for its purpose only, and only
against its own CA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.pki import CertificateAuthority, IssuedCertificate, KeyType, LeafOptions

from .openssl_tools import openssl_verify


def _verify(
    authority: CertificateAuthority, issued: IssuedCertificate, purpose: str
) -> tuple[bool, str]:
    result = openssl_verify(
        authority.trust_bundle_path,
        authority.files.issuing_certificate,
        issued.chain_path,
        purpose=purpose,
    )
    return result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr


@pytest.fixture(params=[KeyType.EC, KeyType.RSA])
def any_authority(request: pytest.FixtureRequest, tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / f"ca-{request.param}", key_type=request.param)


def test_each_certificate_verifies_for_its_purpose_only(
    any_authority: CertificateAuthority,
) -> None:
    server = any_authority.issue_server("server")
    node = any_authority.issue_node("node-1", organization="Hospital A")
    cli = any_authority.issue_cli("alice", role="operator")

    assert _verify(any_authority, server, "sslserver")[0]
    assert _verify(any_authority, node, "sslclient")[0]
    assert _verify(any_authority, cli, "sslclient")[0]
    # negative controls: the EKU decides the purpose
    assert not _verify(any_authority, node, "sslserver")[0]
    assert not _verify(any_authority, cli, "sslserver")[0]
    assert not _verify(any_authority, server, "sslclient")[0]


def test_certificates_fail_against_a_different_ca(
    authority: CertificateAuthority, other_authority: CertificateAuthority
) -> None:
    node = authority.issue_node("node-1")
    assert _verify(authority, node, "sslclient")[0]
    # same CA names, different keys: the signature decides
    assert not _verify(other_authority, node, "sslclient")[0]
    foreign = openssl_verify(
        other_authority.trust_bundle_path,
        authority.files.issuing_certificate,  # the right intermediate, the wrong anchor
        node.chain_path,
        purpose="sslclient",
    )
    assert foreign.returncode != 0


def test_server_auth_only_node_certificate_fails_as_a_client(
    authority: CertificateAuthority,
) -> None:
    wrong = authority.issue_node(
        "wrong-eku", options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    )
    ok, output = _verify(authority, wrong, "sslclient")
    assert not ok
    assert "unsuitable certificate purpose" in output


def test_expired_and_not_yet_valid_certificates_fail(authority: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    expired = authority.issue_node(
        "expired",
        options=LeafOptions(not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
    )
    ok, output = _verify(authority, expired, "sslclient")
    assert not ok
    assert "certificate has expired" in output
    future = authority.issue_node("future", options=LeafOptions(not_before=now + timedelta(days=1)))
    ok, output = _verify(authority, future, "sslclient")
    assert not ok
    assert "certificate is not yet valid" in output
