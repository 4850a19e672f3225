"""Private keys found wherever an app file hides them, beside the look-alikes that are not keys:
keys from cryptography, ssh-keygen and the openssl CLI, in every encoding users meet."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from flwrmtls.app.keyscan import private_key_kind, private_key_kind_in_stream
from flwrmtls.testing.pki import make_test_pki
from tests.pki.openssl_tools import openssl

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
PASSWORD = s.BestAvailableEncryption(b"secret")

_FORMATS = [
    (EC_KEY, s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption(), "PEM PRIVATE KEY"),
    (EC_KEY, s.Encoding.PEM, s.PrivateFormat.PKCS8, PASSWORD, "PEM ENCRYPTED PRIVATE KEY"),
    (EC_KEY, s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption(), "EC PRIVATE"),
    (EC_KEY, s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, PASSWORD, "EC PRIVATE KEY"),
    (RSA_KEY, s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption(), "RSA PRIV"),
    (ED_KEY, s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption(), "OPENSSH PRIVATE KEY"),
    (EC_KEY, s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption(), "DER private key"),
    (EC_KEY, s.Encoding.DER, s.PrivateFormat.PKCS8, PASSWORD, "DER private key"),
    (RSA_KEY, s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption(), "DER"),
    (ED_KEY, s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption(), "DER private key"),
]


@pytest.mark.parametrize(
    ("key", "encoding", "fmt", "encryption", "kind"),
    _FORMATS,
    ids=[
        "pkcs8", "pkcs8-encrypted", "sec1", "sec1-encrypted", "pkcs1", "openssh", "der-pkcs8",
        "der-pkcs8-encrypted", "der-pkcs1", "der-ed25519",
    ],
)  # fmt: skip
def test_keys_in_every_encoding_are_found(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    encoding: s.Encoding,
    fmt: s.PrivateFormat,
    encryption: s.KeySerializationEncryption,
    kind: str,
) -> None:
    data = key.private_bytes(encoding, fmt, encryption)
    found = private_key_kind(data)
    assert found is not None
    assert kind in found
    # The public half of the same key is not a private key (control).
    public = key.public_key().public_bytes(
        encoding, s.PublicFormat.SubjectPublicKeyInfo
    )  # fmt: skip
    assert private_key_kind(public) is None


def test_keys_hidden_in_sources_and_json_are_found() -> None:
    pem = EC_KEY.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode()
    in_python = f'KEY = """\n{pem}"""\nprint("hello")\n'.encode()
    in_json = json.dumps({"type": "service_account", "private_key": pem}).encode()
    assert private_key_kind(in_python) == "a PEM PRIVATE KEY block"
    assert private_key_kind(in_json) == "a PEM PRIVATE KEY block"  # newlines written \n


def test_keys_from_ssh_keygen_and_openssl_are_found(tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id_ed25519")],
        check=True,
    )
    assert private_key_kind((tmp_path / "id_ed25519").read_bytes()) == (
        "a PEM OPENSSH PRIVATE KEY block"
    )
    assert private_key_kind((tmp_path / "id_ed25519.pub").read_bytes()) is None  # control
    assert openssl("genrsa", "-out", tmp_path / "rsa.pem", "2048").returncode == 0
    legacy = openssl(
        "rsa", "-in", tmp_path / "rsa.pem", "-traditional", "-aes128", "-passout", "pass:x",
        "-out", tmp_path / "legacy.pem",
    )  # fmt: skip
    assert legacy.returncode == 0, legacy.stderr
    assert b"Proc-Type: 4,ENCRYPTED" in (tmp_path / "legacy.pem").read_bytes()
    assert private_key_kind((tmp_path / "legacy.pem").read_bytes()) == (
        "a PEM RSA PRIVATE KEY block"
    )


def test_the_ca_tools_keys_are_found_and_its_certificates_are_not(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    chain, key = pki.paths("node-1")
    assert private_key_kind(key.read_bytes()) is not None
    assert private_key_kind(chain.read_bytes()) is None
    assert private_key_kind(pki.trust_bundle_path.read_bytes()) is None
    certificate = x509.load_pem_x509_certificate(chain.read_bytes())
    assert private_key_kind(certificate.public_bytes(s.Encoding.DER)) is None


def test_a_putty_key_is_found() -> None:
    ppk = (
        b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: me\n"
        b"Public-Lines: 2\nAAAAC3NzaC1lZDI1NTE5AAAAIA\nAAAA\nPrivate-Lines: 1\nAAAAIB\n"
    )
    assert private_key_kind(ppk) == "a PuTTY private key"


@pytest.mark.parametrize(
    "text",
    [
        b"# a PEM key starts with -----BEGIN PRIVATE KEY----- and ends with its END line\n",
        b"-----BEGIN PRIVATE KEY----- then some prose about keys -----END PRIVATE KEY-----\n",
        b'MARKER = "-----BEGIN RSA PRIVATE KEY-----"\n',
        b"0 is a number\n",
        b"",
        "caf\u00e9 \u5b66\u4e60 \u2603\n".encode(),
    ],
    ids=["doc-line", "markers-around-prose", "marker-constant", "starts-with-0", "empty", "text"],
)
def test_text_that_only_names_a_key_is_not_one(text: bytes) -> None:
    assert private_key_kind(text) is None


def test_a_key_is_found_in_a_large_file_wherever_the_windows_fall() -> None:
    pem = EC_KEY.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    filler = b"# " + b"x" * 97 + b"\n"
    for offset in (0, (1 << 20) - 100, (1 << 20) - len(pem) // 2, (3 << 20) + 7):
        data = (filler * (offset // 100 + 1))[:offset] + pem + filler * 20_000
        assert private_key_kind_in_stream(io.BytesIO(data).read) == "a PEM PRIVATE KEY block"
    clean = filler * 50_000  # 5 MB without a key (control)
    assert private_key_kind_in_stream(io.BytesIO(clean).read) is None
    der = EC_KEY.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())
    assert private_key_kind_in_stream(io.BytesIO(der).read) == "a DER private key"
