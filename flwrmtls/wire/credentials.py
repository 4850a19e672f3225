"""TLS material from files, checked before anything connects, and the gRPC credentials from it.

Each loader names the flag and the file in its error, says what is wrong and what to do, and
never echoes key material. Client keys may be PKCS#8, SEC1 (EC) or PKCS#1 (RSA) PEM; a key
that does not match its certificate, an encrypted key, or a certificate the link would refuse
for its dates or usage fails here, at startup, instead of as an opaque handshake failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.errors import InputError

__all__ = [
    "TlsIdentity",
    "channel_credentials",
    "check_client_certificate",
    "load_ca_bundle",
    "load_tls_identity",
    "server_credentials",
]

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _read(path: Path, flag: str, what: str) -> bytes:
    try:
        data = path.expanduser().read_bytes()
    except FileNotFoundError:
        raise InputError(f"{flag}: {what} file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{flag}: {path} is a directory, expected a {what} file") from None
    except OSError as error:
        raise InputError(f"{flag}: cannot read {what} file {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise InputError(f"{flag}: {path} is not PEM (no '-----BEGIN' line); expected a {what}")
    return data


def load_ca_bundle(path: Path, flag: str) -> tuple[bytes, list[x509.Certificate]]:
    """A PEM bundle of CA certificates: the raw bytes (for grpc) and the parsed certificates."""
    data = _read(path, flag, "CA certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError(f"{flag}: {path} holds no readable PEM certificate") from None
    return data, certificates


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """A certificate chain and its private key, checked to belong together."""

    chain_pem: bytes
    key_pem: bytes
    """PKCS#8 PEM, whatever format the file had. Held in memory only; never logged."""
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def load_tls_identity(
    certfile: Path, keyfile: Path, *, cert_flag: str, key_flag: str
) -> TlsIdentity:
    chain_pem = _read(certfile, cert_flag, "certificate")
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError:
        raise InputError(f"{cert_flag}: {certfile} holds no readable PEM certificate") from None
    key_data = _read(keyfile, key_flag, "private key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise InputError(
            f"{key_flag}: {keyfile} is encrypted; flwrmtls needs an unencrypted key file "
            "(protect it with file permissions, mode 0600)"
        ) from None
    except ValueError:
        raise InputError(
            f"{key_flag}: {keyfile} is not a readable private key "
            "(expected PEM PKCS#8, SEC1 or PKCS#1)"
        ) from None
    if not isinstance(key, _PrivateKey):
        raise InputError(f"{key_flag}: {keyfile}: unsupported key type {type(key).__name__}")
    if _public_der(key) != _public_der(chain[0]):
        raise InputError(
            f"{key_flag}: the key in {keyfile} does not match the certificate in {certfile} "
            f"({cert_flag}): use the key file issued with that certificate"
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsIdentity(chain_pem=chain_pem, key_pem=key_pem, chain=chain)


def check_client_certificate(identity: TlsIdentity, now: datetime, *, cert_flag: str) -> None:
    """Refuse, with the reason, a client certificate that any link would refuse at once.

    A link refuses these at the TLS handshake, where the client sees only "socket closed".
    """
    leaf = identity.leaf
    if now < leaf.not_valid_before_utc:
        raise InputError(
            f"{cert_flag}: certificate not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC (check this machine's clock)"
        )
    if now > leaf.not_valid_after_utc:
        raise InputError(
            f"{cert_flag}: certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} "
            "UTC: have it reissued"
        )
    try:
        key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.digital_signature:
        raise InputError(
            f"{cert_flag}: certificate's key usage does not include digitalSignature, which a "
            "TLS client needs to prove it holds the key: issue one for client use"
        )
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise InputError(
            f"{cert_flag}: certificate's extended key usage does not include clientAuth, so a "
            "link cannot accept it as a client certificate: issue one for client use"
        )


def server_credentials(
    identity: TlsIdentity, *, client_ca_pem: bytes | None, require_client_auth: bool
) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.chain_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    root_certificates_pem: bytes | None, identity: TlsIdentity | None
) -> grpc.ChannelCredentials:
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=root_certificates_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.chain_pem,
    )
