"""``flwrmtls.testing.pki.make_test_pki``: the PKI other tests build on."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwrmtls.pki import KeyType, describe_certificate, read_certificate_file
from flwrmtls.testing.pki import TEST_PKI_NAMES, make_test_pki

from .openssl_tools import openssl_verify


def test_make_test_pki_issues_the_documented_certificates(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    assert pki.directory == tmp_path / "pki"
    assert pki.trust_bundle_path == tmp_path / "pki" / "ca.crt"
    expected = {
        "server": ("CN=server", "server", "sslserver"),
        "node-1": ("CN=node-1,O=Hospital A", "node", "sslclient"),
        "node-2": ("CN=node-2,O=Hospital B", "node", "sslclient"),
        "cli-operator": ("role=operator,CN=cli-operator", "operator", "sslclient"),
    }
    assert set(expected) == set(TEST_PKI_NAMES)
    for name, (subject, kind, purpose) in expected.items():
        chain_path, key_path = pki.paths(name)
        assert (chain_path, key_path) == (
            pki.directory / f"{name}.pem",
            pki.directory / f"{name}.key",
        )
        assert key_path.is_file()
        description = describe_certificate(read_certificate_file(chain_path))
        assert (description.subject, description.kind) == (subject, kind)
        verified = openssl_verify(
            pki.trust_bundle_path,
            pki.ca.files.issuing_certificate,
            chain_path,
            purpose=purpose,
        )
        assert verified.returncode == 0, verified.stderr
    server = describe_certificate(read_certificate_file(pki.paths("server")[0]))
    assert server.subject_alternative_names == ("DNS:localhost", "IP:127.0.0.1")
    with pytest.raises(FileNotFoundError, match="no certificate 'node-3'"):
        pki.paths("node-3")


def test_make_test_pki_with_rsa(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, key_type=KeyType.RSA)
    description = describe_certificate(read_certificate_file(pki.paths("node-1")[0]))
    assert description.key_type == "RSA 2048"
