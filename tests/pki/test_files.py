"""Files the CA writes: layout, permissions, refusing to overwrite, key encodings, and the
errors for a missing, incomplete or damaged CA directory."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flwrmtls.errors import InputError
from flwrmtls.pki import (
    CertificateAuthority,
    KeyEncoding,
    KeyType,
    LeafOptions,
    read_certificate_file,
    read_private_key_file,
)
from flwrmtls.pki.certsigning import public_key_bytes
from flwrmtls.pki.files import write_file
from flwrmtls.pki.privatekeys import key_type_of


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: a file opened the ordinary way would come out world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_private_keys_are_0600_even_with_umask_0(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "certs")
    node = authority.issue_node("node-1")
    files = authority.files
    for key_path in (files.root_key, files.issuing_key, node.key_path):
        assert _mode(key_path) == 0o600, key_path
    for public_path in (files.trust_bundle, files.issuing_certificate, files.crl, node.chain_path):
        assert _mode(public_path) == 0o644, public_path
    assert _mode(files.private_directory) == 0o700


def test_ca_directory_layout(authority: CertificateAuthority) -> None:
    node = authority.issue_node("node-1")
    names = sorted(
        str(path.relative_to(authority.directory)) for path in authority.directory.rglob("*")
    )
    assert names == [
        "ca",
        "ca.crt",
        "ca/.lock",
        "ca/issuing.crt",
        "ca/issuing.key",
        "ca/revoked.json",
        "ca/root.key",
        "crl.pem",
        "node-1.key",
        "node-1.pem",
    ]  # and no temporary files left behind
    assert node.chain_path == authority.directory / "node-1.pem"
    assert node.key_path == authority.directory / "node-1.key"
    assert authority.trust_bundle_path == authority.directory / "ca.crt"


def test_existing_leaf_files_are_kept_without_force(authority: CertificateAuthority) -> None:
    first = authority.issue_node("node-1")
    chain_before = first.chain_path.read_bytes()
    key_before = first.key_path.read_bytes()
    with pytest.raises(InputError, match=r"node-1\.(pem|key) already exists; pass --force"):
        authority.issue_node("node-1")
    assert first.chain_path.read_bytes() == chain_before
    assert first.key_path.read_bytes() == key_before

    second = authority.issue_node("node-1", options=LeafOptions(force=True))
    assert second.serial != first.serial
    assert second.key_path.read_bytes() != key_before
    assert _mode(second.key_path) == 0o600


def test_a_lone_existing_key_file_also_blocks_issuing(authority: CertificateAuthority) -> None:
    (authority.directory / "node-1.key").write_text("someone else's key")
    with pytest.raises(InputError, match=r"node-1\.key already exists"):
        authority.issue_node("node-1")
    assert not (authority.directory / "node-1.pem").exists()


def test_write_file_without_force_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "file.pem"
    write_file(target, b"first", secret=False, force=False)
    with pytest.raises(InputError, match="pass --force"):
        write_file(target, b"second", secret=True, force=False)
    assert target.read_bytes() == b"first"
    write_file(target, b"third", secret=True, force=True)
    assert target.read_bytes() == b"third"
    assert _mode(target) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.pem"]


def test_creating_a_ca_over_an_existing_one_needs_force(tmp_path: Path) -> None:
    first = CertificateAuthority.create(tmp_path / "certs")
    first.revoke(serial=99)
    with pytest.raises(InputError, match=r"already holds a CA.*pass --force"):
        CertificateAuthority.create(tmp_path / "certs")
    assert CertificateAuthority.load(tmp_path / "certs").root_certificate == first.root_certificate

    second = CertificateAuthority.create(tmp_path / "certs", force=True)
    assert second.root_certificate != first.root_certificate
    assert CertificateAuthority.load(tmp_path / "certs").root_certificate == second.root_certificate
    assert '"revoked": []' in second.files.revocation_record.read_text()  # a new CA, a new record


def test_load_round_trips_and_issues(authority: CertificateAuthority) -> None:
    loaded = CertificateAuthority.load(authority.directory)
    assert loaded.root_certificate == authority.root_certificate
    assert loaded.issuing_certificate == authority.issuing_certificate
    loaded.issue_node("node-1").certificate.verify_directly_issued_by(authority.issuing_certificate)


def test_load_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"holds no CA.*flwrmtls ca init --dir") as caught:
        CertificateAuthority.load(tmp_path / "nothing-here")
    assert "\n" not in str(caught.value)


def test_load_an_incomplete_ca(authority: CertificateAuthority) -> None:
    authority.files.issuing_key.unlink()
    with pytest.raises(InputError, match=r"incomplete: .*issuing\.key is missing"):
        CertificateAuthority.load(authority.directory)


def test_load_a_ca_with_a_foreign_issuing_key(
    authority: CertificateAuthority, other_authority: CertificateAuthority
) -> None:
    shutil.copy(other_authority.files.issuing_key, authority.files.issuing_key)
    with pytest.raises(InputError, match="does not belong to"):
        CertificateAuthority.load(authority.directory)


def test_load_a_ca_whose_issuing_ca_the_root_did_not_sign(
    authority: CertificateAuthority, other_authority: CertificateAuthority
) -> None:
    shutil.copy(other_authority.files.trust_bundle, authority.files.trust_bundle)
    with pytest.raises(InputError, match="was not signed by the root"):
        CertificateAuthority.load(authority.directory)


@pytest.mark.parametrize(
    ("damage", "message"),
    [(b"not a certificate\n", "is not a PEM or DER certificate"),
     (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be parsed")],
)  # fmt: skip
def test_load_a_damaged_root_certificate(
    authority: CertificateAuthority, damage: bytes, message: str
) -> None:
    authority.files.trust_bundle.write_bytes(damage)
    with pytest.raises(InputError, match=message):
        CertificateAuthority.load(authority.directory)


def test_load_a_damaged_issuing_key(authority: CertificateAuthority) -> None:
    authority.files.issuing_key.write_text("garbage")
    with pytest.raises(InputError, match=r"issuing CA key .* is not an unencrypted PEM"):
        CertificateAuthority.load(authority.directory)


@pytest.mark.parametrize(
    ("key_type", "key_encoding", "pem_label"),
    [
        (KeyType.EC, KeyEncoding.PKCS8, b"-----BEGIN PRIVATE KEY-----"),
        (KeyType.EC, KeyEncoding.SEC1, b"-----BEGIN EC PRIVATE KEY-----"),
        (KeyType.RSA, KeyEncoding.PKCS8, b"-----BEGIN PRIVATE KEY-----"),
        (KeyType.RSA, KeyEncoding.PKCS1, b"-----BEGIN RSA PRIVATE KEY-----"),
    ],
)
def test_key_encodings_load_and_match_the_certificate(
    authority: CertificateAuthority,
    key_type: KeyType,
    key_encoding: KeyEncoding,
    pem_label: bytes,
) -> None:
    issued = authority.issue_node(
        "node", options=LeafOptions(key_type=key_type, key_encoding=key_encoding)
    )
    key_pem = issued.key_path.read_bytes()
    assert key_pem.startswith(pem_label)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    assert key_type_of(key) is key_type
    certificate_key = issued.certificate.public_key()
    assert public_key_bytes(key.public_key()) == public_key_bytes(certificate_key)
    assert public_key_bytes(read_private_key_file(issued.key_path).public_key()) == (
        public_key_bytes(certificate_key)
    )


@pytest.mark.parametrize(
    ("key_type", "key_encoding"),
    [(KeyType.RSA, KeyEncoding.SEC1), (KeyType.EC, KeyEncoding.PKCS1)],
)
def test_mismatched_key_encoding_is_refused(
    authority: CertificateAuthority, key_type: KeyType, key_encoding: KeyEncoding
) -> None:
    with pytest.raises(InputError, match=f"key encoding {key_encoding.value} holds only"):
        authority.issue_node(
            "node", options=LeafOptions(key_type=key_type, key_encoding=key_encoding)
        )
    assert not (authority.directory / "node.key").exists()
    assert not (authority.directory / "node.pem").exists()


def test_rsa_ca(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "rsa", key_type=KeyType.RSA, rsa_bits=3072)
    assert authority.key_type is KeyType.RSA
    root_key = read_private_key_file(authority.files.root_key)
    assert isinstance(root_key, rsa.RSAPrivateKey)
    assert root_key.key_size == 3072
    leaf_key = read_private_key_file(authority.issue_server("server").key_path)
    assert isinstance(leaf_key, rsa.RSAPrivateKey)
    assert leaf_key.key_size == 2048  # leaves: RSA 2048 unless asked otherwise
    assert CertificateAuthority.load(tmp_path / "rsa").key_type is KeyType.RSA
    with pytest.raises(InputError, match="RSA key size 1024 is not supported"):
        CertificateAuthority.create(tmp_path / "weak", key_type=KeyType.RSA, rsa_bits=1024)


@pytest.mark.parametrize("name", ["", "../escape", "sub/dir", ".hidden", "-flag", "a b"])
def test_unusable_certificate_names_are_refused(authority: CertificateAuthority, name: str) -> None:
    with pytest.raises(InputError, match="not usable as a file name"):
        authority.issue_node(name, common_name="node")


def test_a_leaf_may_not_overwrite_the_crl(authority: CertificateAuthority) -> None:
    with pytest.raises(InputError, match="would overwrite the CA's"):
        authority.issue_node("crl", options=LeafOptions(force=True))
    assert authority.crl_path.read_bytes().startswith(b"-----BEGIN X509 CRL-----")


def test_out_dir_writes_elsewhere(authority: CertificateAuthority, tmp_path: Path) -> None:
    issued = authority.issue_node(
        "node-1", options=LeafOptions(out_dir=tmp_path / "elsewhere" / "deep")
    )
    assert issued.chain_path == tmp_path / "elsewhere" / "deep" / "node-1.pem"
    assert issued.key_path.is_file()
    assert not (authority.directory / "node-1.pem").exists()


def test_unreadable_inputs_are_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"certificate file .*missing\.pem does not exist"):
        read_certificate_file(tmp_path / "missing.pem")
    with pytest.raises(InputError, match="is a directory, not a file"):
        read_certificate_file(tmp_path)
    (tmp_path / "key.pem").write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(InputError, match="is not an unencrypted PEM private key") as caught:
        read_private_key_file(tmp_path / "key.pem")
    assert "\n" not in str(caught.value)
