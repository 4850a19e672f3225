"""Private keys the CA makes: which algorithms, and how they are written to disk.

Rules kept here:

* ``KeyType.EC`` is NIST P-256; ``KeyType.RSA`` is 2048 bits unless asked for 3072 or 4096.
* A key is written as unencrypted PEM in one of three encodings: PKCS#8 (any key), SEC1 (EC
  keys only) or PKCS#1 (RSA keys only). SEC1 and PKCS#1 are both what cryptography calls
  ``TraditionalOpenSSL``; asking for the one that does not fit the key is an InputError.
* Every certificate and CRL is signed with SHA-256.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flwrmtls.errors import InputError

__all__ = [
    "RSA_KEY_SIZES",
    "SIGNATURE_HASH",
    "KeyEncoding",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "check_key_encoding",
    "describe_public_key",
    "encode_private_key",
    "generate_private_key",
    "key_type_of",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_KEY_SIZES = (2048, 3072, 4096)
SIGNATURE_HASH = hashes.SHA256()


class KeyType(enum.StrEnum):
    """The algorithm of a key the CA generates."""

    EC = "ec"
    RSA = "rsa"


class KeyEncoding(enum.StrEnum):
    """How a private key file is encoded (always unencrypted PEM)."""

    PKCS8 = "pkcs8"
    SEC1 = "sec1"
    PKCS1 = "pkcs1"


_ENCODING_FOR_KEY_TYPE = {KeyEncoding.SEC1: KeyType.EC, KeyEncoding.PKCS1: KeyType.RSA}


def check_key_encoding(key_type: KeyType, key_encoding: KeyEncoding) -> None:
    """Raise InputError when ``key_encoding`` cannot hold a ``key_type`` key."""
    key_type, key_encoding = KeyType(key_type), KeyEncoding(key_encoding)
    required = _ENCODING_FOR_KEY_TYPE.get(key_encoding)
    if required is not None and required is not key_type:
        raise InputError(
            f"key encoding {key_encoding.value} holds only {required.value} keys, "
            f"not {key_type.value} keys; use pkcs8, or a key type of {required.value}"
        )


def generate_private_key(key_type: KeyType, *, rsa_bits: int = 2048) -> PrivateKey:
    """A fresh key: P-256 for EC, ``rsa_bits`` (2048, 3072 or 4096) for RSA."""
    if KeyType(key_type) is KeyType.EC:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits not in RSA_KEY_SIZES:
        sizes = ", ".join(map(str, RSA_KEY_SIZES))
        raise InputError(f"RSA key size {rsa_bits} is not supported; use one of {sizes}")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """The KeyType of a key (private or public)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return KeyType.EC
    return KeyType.RSA


def encode_private_key(key: PrivateKey, key_encoding: KeyEncoding) -> bytes:
    """Unencrypted PEM bytes of ``key``; InputError when the encoding does not fit the key."""
    check_key_encoding(key_type_of(key), key_encoding)
    private_format = (
        serialization.PrivateFormat.PKCS8
        if KeyEncoding(key_encoding) is KeyEncoding.PKCS8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=private_format,
        encryption_algorithm=serialization.NoEncryption(),
    )


def describe_public_key(key: object) -> str:
    """A short readable name of a public key: ``EC P-256 (secp256r1)``, ``RSA 2048``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve_names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        curve = key.curve.name
        return f"EC {curve_names[curve]} ({curve})" if curve in curve_names else f"EC {curve}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__.removesuffix("PublicKey") or "unknown"
