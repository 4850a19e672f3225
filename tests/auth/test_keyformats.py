"""EC keys as users have them: files made by ssh-keygen and by the cryptography package.

Each refusal sits beside its negative control, and every refusal message is checked not to
echo the key file's contents.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from flwrmtls.auth.identity import IdentitySource, node_id_for
from flwrmtls.auth.keyformats import (
    SUPPORTED_CURVES,
    key_fingerprint,
    load_node_private_key,
    load_public_key_file,
    node_id_for_key,
    public_key_der,
)
from flwrmtls.errors import InputError

FLAG = "--auth-supernode-private-key"


def ssh_keygen(directory: Path, name: str, *options: str, passphrase: str = "") -> Path:
    """A key pair written by ssh-keygen, as users make them; returns the private key path."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", *options, "-N", passphrase, "-C", f"{name}@test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def ssh_fingerprint(public_file: Path) -> str:
    """What ``ssh-keygen -l -E sha256`` shows: ``384 SHA256:... comment (ECDSA)``."""
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return shown.split()[1]


def write_pem_private(path: Path, key: PrivateKeyTypes, form: serialization.PrivateFormat) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    )
    return path


def write_pem_public(path: Path, key: PublicKeyTypes) -> Path:
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def assert_no_key_material(message: str, key_file: Path) -> None:
    """No base64 run from the file (PEM body, or the .pub's key field) appears in ``message``."""
    for line in key_file.read_text().splitlines():
        for field in line.split():
            if len(field) >= 16 and not field.startswith("-----"):
                assert field[:16] not in message


def refusal(load: object, *args: object) -> str:
    with pytest.raises(InputError) as caught:
        load(*args)  # type: ignore[operator]
    return str(caught.value)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "p256": ssh_keygen(directory, "p256", "-t", "ecdsa", "-b", "256"),
        "p384": ssh_keygen(directory, "p384", "-t", "ecdsa", "-b", "384"),
        "p521": ssh_keygen(directory, "p521", "-t", "ecdsa", "-b", "521"),
        "pem": ssh_keygen(directory, "pem", "-t", "ecdsa", "-b", "256", "-m", "PEM"),
        "encrypted": ssh_keygen(directory, "enc", "-t", "ecdsa", passphrase="secret-1"),
        "encrypted_pem": ssh_keygen(
            directory, "encpem", "-t", "ecdsa", "-m", "PEM", passphrase="secret-1"
        ),
        "ed25519": ssh_keygen(directory, "ed25519", "-t", "ed25519"),
        "rsa": ssh_keygen(directory, "rsa", "-t", "rsa", "-b", "2048"),
    }


def pub(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


# --- the node's private key ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "bits"), [("p256", 256), ("p384", 384), ("p521", 521)])
def test_ssh_keygen_private_key_loads_on_each_curve(
    keys: dict[str, Path], name: str, bits: int
) -> None:
    key = load_node_private_key(keys[name], FLAG)
    assert key.curve.key_size == bits
    assert public_key_der(key) == public_key_der(load_public_key_file(pub(keys[name])))


def test_pem_private_keys_load_sec1_from_ssh_keygen_and_pkcs8_from_cryptography(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    assert keys["pem"].read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    sec1 = load_node_private_key(keys["pem"], FLAG)
    assert public_key_der(sec1) == public_key_der(load_public_key_file(pub(keys["pem"])))

    generated = ec.generate_private_key(ec.SECP384R1())
    pkcs8 = write_pem_private(tmp_path / "k.pem", generated, serialization.PrivateFormat.PKCS8)
    assert public_key_der(load_node_private_key(pkcs8, FLAG)) == public_key_der(generated)


def test_missing_file_and_directory_are_refused_naming_flag_and_file(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    load_node_private_key(keys["p384"], FLAG)  # control
    missing = refusal(load_node_private_key, tmp_path / "nope", FLAG)
    assert missing.startswith(FLAG)
    assert str(tmp_path / "nope") in missing
    assert "does not exist" in missing
    directory = refusal(load_node_private_key, tmp_path, FLAG)
    assert directory.startswith(FLAG)
    assert "is a directory" in directory


@pytest.mark.parametrize("name", ["encrypted", "encrypted_pem"])
def test_encrypted_private_key_is_refused_with_what_to_do(keys: dict[str, Path], name: str) -> None:
    load_node_private_key(keys["p256"], FLAG)  # control: the same kind of key, unencrypted
    message = refusal(load_node_private_key, keys[name], FLAG)
    assert message.startswith(f"{FLAG}: {keys[name]} is encrypted")
    assert "unencrypted" in message
    assert "0600" in message
    assert_no_key_material(message, keys[name])


@pytest.mark.parametrize("name", ["ed25519", "rsa"])
def test_other_ssh_key_types_are_refused_with_the_command_to_make_one(
    keys: dict[str, Path], name: str
) -> None:
    load_node_private_key(keys["p384"], FLAG)  # control
    message = refusal(load_node_private_key, keys[name], FLAG)
    assert message.startswith(f"{FLAG}: {keys[name]}")
    assert "ssh-keygen -t ecdsa -b 384" in message
    assert {"ed25519": "Ed25519", "rsa": "RSA"}[name] in message
    assert_no_key_material(message, keys[name])


def test_dsa_and_other_curves_are_refused(tmp_path: Path) -> None:
    good = ec.generate_private_key(ec.SECP521R1())
    control = write_pem_private(tmp_path / "p521", good, serialization.PrivateFormat.PKCS8)
    assert load_node_private_key(control, FLAG).curve.name == "secp521r1"

    p224 = ec.generate_private_key(ec.SECP224R1())
    path = write_pem_private(tmp_path / "p224", p224, serialization.PrivateFormat.PKCS8)
    message = refusal(load_node_private_key, path, FLAG)
    assert "P-224" in message
    assert "ssh-keygen -t ecdsa -b 384" in message
    assert_no_key_material(message, path)

    secp256k1 = ec.generate_private_key(ec.SECP256K1())
    path = write_pem_private(tmp_path / "k1", secp256k1, serialization.PrivateFormat.PKCS8)
    assert "secp256k1" in refusal(load_node_private_key, path, FLAG)

    dsa_key = dsa.generate_private_key(1024)  # noqa: S505 - refused whatever its size
    path = write_pem_private(tmp_path / "dsa", dsa_key, serialization.PrivateFormat.PKCS8)
    message = refusal(load_node_private_key, path, FLAG)
    assert "DSA" in message
    assert_no_key_material(message, path)


def test_not_a_key_and_a_public_key_are_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    load_node_private_key(keys["p384"], FLAG)  # control
    text = tmp_path / "notes.txt"
    text.write_text("node 1 lives in hospital A\n")
    assert "is not a readable private key" in refusal(load_node_private_key, text, FLAG)

    message = refusal(load_node_private_key, pub(keys["p384"]), FLAG)
    assert message.startswith(f"{FLAG}: {pub(keys['p384'])} is a public key")
    assert_no_key_material(message, pub(keys["p384"]))


# --- public keys to register ----------------------------------------------------------------


def test_pub_file_and_its_pem_form_are_the_same_key(keys: dict[str, Path], tmp_path: Path) -> None:
    pem = tmp_path / "p384.pkcs8.pub"
    exported = subprocess.run(
        ["ssh-keygen", "-e", "-m", "PKCS8", "-f", str(pub(keys["p384"]))],
        check=True,
        capture_output=True,
    ).stdout
    pem.write_bytes(exported)
    assert exported.startswith(b"-----BEGIN PUBLIC KEY-----")
    from_pub = load_public_key_file(pub(keys["p384"]))
    from_pem = load_public_key_file(pem)
    assert public_key_der(from_pub) == public_key_der(from_pem)
    assert key_fingerprint(from_pub) == key_fingerprint(from_pem)
    assert node_id_for_key(from_pub) == node_id_for_key(from_pem)


def test_pub_file_with_surrounding_blank_lines_loads_but_two_keys_do_not(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    line = pub(keys["p256"]).read_text().strip()
    padded = tmp_path / "padded.pub"
    padded.write_text(f"\n{line}\n\n")
    assert public_key_der(load_public_key_file(padded)) == public_key_der(
        load_public_key_file(pub(keys["p256"]))
    )
    two = tmp_path / "two.pub"
    two.write_text(line + "\n" + pub(keys["p384"]).read_text())
    assert "is not a readable public key" in refusal(load_public_key_file, two)


@pytest.mark.parametrize("name", ["p256", "pem", "encrypted", "encrypted_pem"])
def test_private_key_given_as_public_key_is_refused_without_echoing_it(
    keys: dict[str, Path], name: str
) -> None:
    load_public_key_file(pub(keys[name]))  # control: its .pub registers
    message = refusal(load_public_key_file, keys[name])
    assert message == f"{keys[name]} is a private key: register its public key ({keys[name]}.pub)"
    assert_no_key_material(message, keys[name])


def test_pkcs8_private_key_given_as_public_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = write_pem_public(tmp_path / "k.pub.pem", key.public_key())
    assert public_key_der(load_public_key_file(public)) == public_key_der(key)  # control
    private = write_pem_private(tmp_path / "k.pem", key, serialization.PrivateFormat.PKCS8)
    message = refusal(load_public_key_file, private)
    assert "is a private key" in message
    assert_no_key_material(message, private)


@pytest.mark.parametrize(("name", "shown"), [("ed25519", "Ed25519"), ("rsa", "RSA")])
def test_other_public_key_types_are_refused(keys: dict[str, Path], name: str, shown: str) -> None:
    load_public_key_file(pub(keys["p521"]))  # control
    message = refusal(load_public_key_file, pub(keys[name]))
    assert message.startswith(str(pub(keys[name])))
    assert shown in message
    assert "ssh-keygen -t ecdsa -b 384" in message
    assert_no_key_material(message, pub(keys[name]))


def test_public_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    good_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    good = write_pem_public(tmp_path / "p256.pem", good_key)
    assert isinstance(load_public_key_file(good).curve, ec.SECP256R1)  # control
    bad_key = ec.generate_private_key(ec.SECP224R1()).public_key()
    bad = write_pem_public(tmp_path / "p224.pem", bad_key)
    message = refusal(load_public_key_file, bad)
    assert "P-224" in message
    assert_no_key_material(message, bad)


def test_not_a_public_key_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ecdsa-sha2-nistp384 not-base64 me@host\n")
    assert "is not a readable public key" in refusal(load_public_key_file, garbage)
    empty = tmp_path / "empty.pub"
    empty.write_text("")
    assert "is not a readable public key" in refusal(load_public_key_file, empty)
    missing = refusal(load_public_key_file, tmp_path / "missing.pub")
    assert "does not exist" in missing


# --- naming a key ---------------------------------------------------------------------------


def test_supported_curves_are_the_three_ssh_keygen_makes() -> None:
    assert {curve().name for curve in SUPPORTED_CURVES} == {"secp256r1", "secp384r1", "secp521r1"}


@pytest.mark.parametrize("name", ["p256", "p384", "p521", "pem"])
def test_fingerprint_is_what_ssh_keygen_shows(keys: dict[str, Path], name: str) -> None:
    expected = ssh_fingerprint(pub(keys[name]))
    assert expected.startswith("SHA256:")
    assert key_fingerprint(load_public_key_file(pub(keys[name]))) == expected
    assert key_fingerprint(load_node_private_key(keys[name], FLAG)) == expected


def test_fingerprint_of_a_cryptography_key_is_what_ssh_keygen_shows(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    public = tmp_path / "generated.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    assert key_fingerprint(key) == ssh_fingerprint(public)
    other = ec.generate_private_key(ec.SECP384R1())
    assert key_fingerprint(other) != key_fingerprint(key)


def test_node_id_is_stable_for_a_key_and_differs_between_keys(keys: dict[str, Path]) -> None:
    private = load_node_private_key(keys["p384"], FLAG)
    public = load_public_key_file(pub(keys["p384"]))
    assert node_id_for_key(private) == node_id_for_key(public)
    assert node_id_for_key(public) == node_id_for(IdentitySource.KEY, public_key_der(public).hex())
    assert 0 < node_id_for_key(public) < 1 << 63
    others = {node_id_for_key(load_public_key_file(pub(keys[n]))) for n in ("p256", "p521")}
    assert node_id_for_key(public) not in others
    assert len(others) == 2


def test_public_key_der_is_canonical_whatever_the_point_encoding() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    same = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), compressed)
    assert public_key_der(same) == public_key_der(key)
    assert public_key_der(key)[-65] == 0x04  # uncompressed point
