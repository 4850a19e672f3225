"""EC keys as users have them: what ``ssh-keygen -t ecdsa`` writes, or PEM.

Rules kept here:

* A node's private key may be the OpenSSH private key ``ssh-keygen -t ecdsa -b 384 -N ""``
  writes, or PEM (PKCS#8 or SEC1). It must be unencrypted (the node runs unattended; the file's
  mode, 0600, protects it: a key file other users may read is used with a warning,
  :mod:`flwrmtls.keyfiles`).
* A public key to register may be the one-line ``.pub`` ssh-keygen writes
  (``ecdsa-sha2-nistp384 AAAA... comment``) or a PEM public key (``ssh-keygen -e -m PKCS8``).
* Only ECDSA keys on P-256, P-384 or P-521 are accepted; every other key type or curve is
  refused with the command that makes a usable key.
* A key is named by its OpenSSH fingerprint (exactly what ``ssh-keygen -l -E sha256`` shows),
  and its node id derives from its SubjectPublicKeyInfo, so the same key is the same node
  whichever file format carried it.
* Errors name the file (and the flag, for the node's own key) and never echo key material.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning

from flwrmtls.auth.identity import IdentitySource, node_id_for
from flwrmtls.errors import InputError
from flwrmtls.keyfiles import check_key_file

__all__ = [
    "SUPPORTED_CURVES",
    "curve_label",
    "key_fingerprint",
    "load_node_private_key",
    "load_public_key_file",
    "node_id_for_key",
    "parse_node_public_key",
    "public_key_der",
]

SUPPORTED_CURVES: tuple[type[ec.EllipticCurve], ...] = (
    ec.SECP256R1,
    ec.SECP384R1,
    ec.SECP521R1,
)
"""P-256, P-384 and P-521: the curves ``ssh-keygen -t ecdsa -b 256|384|521`` makes."""

_CURVE_LABELS = {
    "secp192r1": "P-192",
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
_MAKE_ONE = "only ECDSA keys on P-256, P-384 or P-521 are supported: ssh-keygen -t ecdsa -b 384"
_OPENSSH_PRIVATE = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_BEGIN = b"-----BEGIN "
_MAX_KEY_FILE = 64 * 1024
"""Key files are a few hundred bytes; anything much larger is the wrong file."""

_EcKey = ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey


def curve_label(curve: ec.EllipticCurve) -> str:
    """``P-384`` for a supported curve, the curve's own name (``secp224r1``) otherwise."""
    return _CURVE_LABELS.get(curve.name, curve.name)


def _key_type_name(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "an Ed448 key"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return "a DSA key"
    return f"a {type(key).__name__}"


def _unsupported(key: object) -> str | None:
    """Why ``key`` is not usable here, or None if it is an EC key on a supported curve."""
    if not isinstance(key, _EcKey):
        return f"holds {_key_type_name(key)}; {_MAKE_ONE}"
    if not isinstance(key.curve, SUPPORTED_CURVES):
        return f"holds an ECDSA key on {curve_label(key.curve)}; {_MAKE_ONE}"
    return None


def _read(path: Path, where: str, what: str) -> bytes:
    try:
        with path.expanduser().open("rb") as file:
            data = file.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise InputError(f"{where}{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{where}{path} is a directory, expected a {what} file") from None
    except OSError as error:
        raise InputError(f"{where}cannot read {what} file {path}: {error.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{where}{path} is too large to be a {what} file")
    return data


def _looks_like_private_key(data: bytes) -> bool:
    # OpenSSH, PKCS#8 (plain and encrypted), SEC1, PKCS#1, DSA: all "... PRIVATE KEY-----".
    return _PEM_BEGIN in data and b"PRIVATE KEY-----" in data


def _looks_like_public_key(data: bytes) -> bool:
    text = data.lstrip()
    return text.startswith((b"ecdsa-sha2-", b"ssh-", b"sk-")) or (
        b"PUBLIC KEY-----" in data and _PEM_BEGIN in data
    )


def load_node_private_key(path: Path, flag: str) -> ec.EllipticCurvePrivateKey:
    """A node's signing key: OpenSSH (``ssh-keygen -t ecdsa``) or PEM, unencrypted, P-256/384/521.

    Raises InputError naming ``flag`` and ``path``.
    """
    where = f"{flag}: "
    data = _read(path, where, "private key")
    if _looks_like_public_key(data) and not _looks_like_private_key(data):
        raise InputError(
            f"{where}{path} is a public key: give the private key file "
            "(the one without .pub that ssh-keygen wrote beside it)"
        )
    try:
        with warnings.catch_warnings():
            # SSH DSA keys warn on load; they are refused below anyway.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if _OPENSSH_PRIVATE in data:
                key: object = serialization.load_ssh_private_key(data, password=None)
            elif _PEM_BEGIN in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                raise ValueError("neither OpenSSH nor PEM")
    except TypeError:
        raise InputError(
            f"{where}{path} is encrypted; flwrmtls needs an unencrypted key file "
            "(protect it with file permissions, mode 0600; ssh-keygen -p -N '' removes "
            "the passphrase)"
        ) from None
    except UnsupportedAlgorithm:
        raise InputError(f"{where}{path} holds an unsupported key type; {_MAKE_ONE}") from None
    except ValueError:
        raise InputError(
            f"{where}{path} is not a readable private key (expected what "
            "`ssh-keygen -t ecdsa` writes, or PEM PKCS#8 or SEC1)"
        ) from None
    problem = _unsupported(key)
    if problem is not None:
        raise InputError(f"{where}{path} {problem}")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    check_key_file(path, flag)
    return key


def _parse_public(data: bytes) -> object:
    if _PEM_BEGIN in data:
        return serialization.load_pem_public_key(data)
    lines = [line.strip() for line in data.splitlines()]
    keys = [line for line in lines if line and not line.startswith(b"#")]
    if len(keys) != 1:
        raise ValueError(f"{len(keys)} key lines")
    return serialization.load_ssh_public_key(keys[0])


def load_public_key_file(path: Path) -> ec.EllipticCurvePublicKey:
    """A public key to register: the one-line ``.pub`` ssh-keygen writes, or PEM.

    A private key given by mistake is refused (without being echoed), as are other key types
    and curves. Raises InputError naming ``path``.
    """
    data = _read(path, "", "public key")
    if _looks_like_private_key(data):
        raise InputError(f"{path} is a private key: register its public key ({path}.pub)")
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise InputError(
            f"{path} is a certificate, not a key: certificate nodes need no registration; "
            "register the .pub file of an EC key"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            key = _parse_public(data)
    except UnsupportedAlgorithm:
        raise InputError(f"{path} holds an unsupported key type; {_MAKE_ONE}") from None
    except ValueError:
        raise InputError(
            f"{path} is not a readable public key (expected the one line of the .pub file "
            "`ssh-keygen -t ecdsa` writes, or a PEM public key)"
        ) from None
    problem = _unsupported(key)
    if problem is not None:
        raise InputError(f"{path} {problem}")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def parse_node_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    """A SubjectPublicKeyInfo (DER) as a supported EC public key, or ValueError saying why.

    What the link does with a key a node or the CLI sent; the message never echoes the key.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            key: object = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a public key (expected a SubjectPublicKeyInfo, DER)") from None
    problem = _unsupported(key)
    if problem is not None:
        raise ValueError(f"public key {problem}")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _public(key: _EcKey) -> ec.EllipticCurvePublicKey:
    return key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key


def public_key_der(key: _EcKey) -> bytes:
    """The key's SubjectPublicKeyInfo, DER (uncompressed point): its canonical encoding."""
    return _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: _EcKey) -> str:
    """``SHA256:...``, exactly what ``ssh-keygen -l -E sha256 -f FILE.pub`` shows.

    Unpadded base64 of SHA-256 over the OpenSSH public key blob.
    """
    line = _public(key).public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")


def node_id_for_key(key: _EcKey) -> int:
    """The node id of an EC-key node: a function of its public key alone."""
    return node_id_for(IdentitySource.KEY, public_key_der(key).hex())
