"""The openssl recipe in certs/README.md works: it runs, its certificates verify for their
purposes, its CRL revokes what it says, and flwrmtls maps its certificates to the same
identities (and node ids) as certificates made by ``flwrmtls ca``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.pki import CertificateAuthority, describe_certificate, read_certificate_file

from .openssl_tools import REPOSITORY_ROOT, openssl_verify, run_flwrmtls

RECIPE = Path(__file__).parent / "data" / "openssl-recipe.sh"
README = REPOSITORY_ROOT / "certs" / "README.md"


@pytest.fixture(scope="module")
def recipe_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("openssl-recipe")
    shell = shutil.which("sh") or "/bin/sh"
    result = subprocess.run(
        [shell, str(RECIPE)],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return directory


def test_readme_quotes_the_tested_recipe_verbatim() -> None:
    assert RECIPE.read_text() in README.read_text()


def test_recipe_certificates_verify_for_their_purposes(recipe_directory: Path) -> None:
    def verify(name: str, purpose: str) -> subprocess.CompletedProcess[str]:
        return openssl_verify(
            recipe_directory / "ca.crt",
            recipe_directory / "ca" / "issuing.crt",
            recipe_directory / f"{name}.pem",
            purpose=purpose,
        )

    for name, purpose in [("server", "sslserver"), ("node-1", "sslclient"), ("alice", "sslclient")]:
        assert verify(name, purpose).returncode == 0, verify(name, purpose).stderr
    assert verify("node-1", "sslserver").returncode != 0  # negative control: EKU clientAuth only
    assert verify("server", "sslclient").returncode != 0
    for key in ("ca/root.key", "ca/issuing.key", "node-1.key", "alice.key"):
        assert (recipe_directory / key).stat().st_mode & 0o077 == 0, key


def test_recipe_crl_revokes_node_2_only(recipe_directory: Path) -> None:
    def verify(name: str) -> subprocess.CompletedProcess[str]:
        return openssl_verify(
            recipe_directory / "ca.crt",
            recipe_directory / "ca" / "issuing.crt",
            recipe_directory / f"{name}.pem",
            purpose="sslclient",
            crl=recipe_directory / "crl.pem",
        )

    refused = verify("node-2")
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stderr
    assert verify("node-1").returncode == 0  # negative control
    crl = x509.load_pem_x509_crl((recipe_directory / "crl.pem").read_bytes())
    issuing = read_certificate_file(recipe_directory / "ca" / "issuing.crt")
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    node_2 = read_certificate_file(recipe_directory / "node-2.pem")
    entry = crl.get_revoked_certificate_by_serial_number(node_2.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise


def test_recipe_certificates_map_to_the_same_identities(
    recipe_directory: Path, tmp_path: Path
) -> None:
    shown = run_flwrmtls("ca", "show", "node-1.pem", "--format", "json", cwd=recipe_directory)
    assert shown.returncode == 0, shown.stderr
    node = json.loads(shown.stdout)
    assert node["identity"] == "CN=node-1,O=Hospital A"
    assert node["kind"] == "node"

    # the same Subject from the built-in CA is the same node (string types aside)
    authority = CertificateAuthority.create(tmp_path / "certs")
    ours = authority.issue_node("node-1", organization="Hospital A").certificate
    assert describe_certificate(ours).node_id == node["node_id"]

    alice = describe_certificate(read_certificate_file(recipe_directory / "alice.pem"))
    assert alice.kind == "operator"
    ours_alice = authority.issue_cli("alice", role="operator").certificate
    assert describe_certificate(ours_alice).node_id == alice.node_id

    server = describe_certificate(read_certificate_file(recipe_directory / "server.pem"))
    assert server.subject_alternative_names == ("DNS:localhost", "IP:127.0.0.1")
    assert server.extended_key_usages == ("serverAuth",)
