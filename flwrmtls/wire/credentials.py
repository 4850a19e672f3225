"""TLS material from files, checked before anything connects, and the gRPC credentials from it.

Each loader names the flag and the file in its error, says what is wrong and what to do, and
never echoes key material. Client keys may be PKCS#8, SEC1 (EC) or PKCS#1 (RSA) PEM; a key
that does not match its certificate, an encrypted key, or a certificate the link would refuse
for its dates or usage fails here, at startup, instead of as an opaque handshake failure.

:func:`check_own_certificate` is the one home of a client's checks of its own certificate: at
start-up (:func:`check_client_certificate`, its definite causes) and again whenever the link
closes a handshake without a word (see :mod:`flwrmtls.wire.errors`), when the certificate may
have expired since, or may not chain to a CA the link trusts.

A key file that other users may read is used with a warning (:mod:`flwrmtls.keyfiles`).

A key gRPC's TLS (BoringSSL) cannot sign a handshake with is refused here, naming the key
(:func:`tls_key_problem`, one table): ECDSA P-521 and Ed25519 keys load, match their
certificate, and then fail every handshake with "no common signature algorithms" (a node would
retry for ever). cert-manager writes both when a Certificate asks for them.

Clients always verify the link with an explicit CA bundle: :func:`channel_credentials` takes
the bundle's bytes, never None, so grpc never falls back to the public CAs it bundles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from flwrmtls.errors import InputError
from flwrmtls.keyfiles import check_key_file

__all__ = [
    "CertificateCheck",
    "CertificateProblem",
    "TlsIdentity",
    "channel_credentials",
    "check_client_certificate",
    "check_own_certificate",
    "load_ca_bundle",
    "load_tls_identity",
    "no_root_certificates",
    "server_credentials",
    "tls_key_problem",
]

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"
"""In every PEM private key's BEGIN line (PKCS#8, SEC1, PKCS#1, encrypted or not)."""


_TLS_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
"""The ECDSA curves gRPC's TLS signs and verifies handshakes with."""


def tls_key_problem(key: object) -> str | None:
    """Why gRPC's TLS cannot use ``key`` for a handshake, or None (RSA, ECDSA P-256/P-384)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return None if key.key_size >= 2048 else f"an RSA key of {key.key_size} bits (under 2048)"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name in _TLS_CURVES:
            return None
        return f"an ECDSA key on curve {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__}"


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
    if _PRIVATE_KEY_MARKER in data:  # never hand a key to grpc as trust anchors
        raise InputError(f"{flag}: {path} holds a private key; give the CA certificate(s)")
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
    key_data = _read(keyfile, key_flag, "private key")
    if _PRIVATE_KEY_MARKER in chain_pem and b"CERTIFICATE-----" in key_data:
        raise InputError(
            f"{cert_flag}: {certfile} is a private key and {key_flag}: {keyfile} a certificate: "
            f"did you swap {cert_flag} and {key_flag}?"
        )
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError:
        what = (
            "is a private key, not a certificate"
            if _PRIVATE_KEY_MARKER in chain_pem
            else ("holds no readable PEM certificate")
        )
        raise InputError(f"{cert_flag}: {certfile} {what}") from None
    if _PRIVATE_KEY_MARKER not in key_data and b"CERTIFICATE-----" in key_data:
        raise InputError(f"{key_flag}: {keyfile} is a certificate, not a private key")
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
    if problem := tls_key_problem(key):
        raise InputError(
            f"{key_flag}: {keyfile} holds {problem}, which gRPC's TLS cannot sign a handshake "
            "with: issue the certificate with an RSA (2048 bits or more) or ECDSA P-256/P-384 "
            "key (cert-manager: spec.privateKey.algorithm RSA, or ECDSA with size 256 or 384)"
        )
    if _public_der(key) != _public_der(chain[0]):
        raise InputError(
            f"{key_flag}: the key in {keyfile} does not match the certificate in {certfile} "
            f"({cert_flag}): use the key file issued with that certificate"
        )
    check_key_file(keyfile, key_flag)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsIdentity(chain_pem=chain_pem, key_pem=key_pem, chain=chain)


@dataclass(frozen=True, slots=True)
class CertificateProblem:
    """Something wrong with a client's own certificate, found without asking the link."""

    message: str
    """One line, naming the flag: what is wrong and what to do."""
    definite: bool
    """True: every link refuses this certificate (its dates, its usage, its key). False: the
    likely cause of a refusal only (a link may trust a CA the client does not know of)."""


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    """What a client found about its own certificate: :func:`check_own_certificate`."""

    problems: tuple[CertificateProblem, ...]
    checked: str
    """What was checked, for a line saying nothing was found."""

    @property
    def definite(self) -> CertificateProblem | None:
        return next((p for p in self.problems if p.definite), None)


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _leaf_problems(identity: TlsIdentity, now: datetime, flag: str) -> list[CertificateProblem]:
    """Causes for which every link refuses the leaf: dates, key usage, EKU, key."""
    leaf = identity.leaf
    found: list[str] = []
    if now < leaf.not_valid_before_utc:
        found.append(
            f"{flag}: certificate not valid before {_utc(leaf.not_valid_before_utc)} "
            "(check this machine's clock)"
        )
    if now > leaf.not_valid_after_utc:
        found.append(
            f"{flag}: certificate expired on {_utc(leaf.not_valid_after_utc)}: have it reissued"
        )
    try:
        key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.digital_signature:
        found.append(
            f"{flag}: certificate's key usage does not include digitalSignature, which a "
            "TLS client needs to prove it holds the key: issue one for client use"
        )
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        found.append(
            f"{flag}: certificate's extended key usage does not include clientAuth, so a "
            "link cannot accept it as a client certificate: issue one for client use"
        )
    try:
        key = serialization.load_pem_private_key(identity.key_pem, password=None)
        matches = _public_der(key) == _public_der(leaf)
    except (TypeError, ValueError):
        matches = False
    if not matches:
        found.append(f"{flag}: the private key in use does not match the certificate")
    return [CertificateProblem(message, definite=True) for message in found]


def _ee_policy() -> ExtensionPolicy:
    # WebPKI's default requires a SAN; client certificates are often CN-only.
    return ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )


def _chain_problems(
    identity: TlsIdentity, now: datetime, flag: str, roots: Sequence[x509.Certificate] | None,
    roots_flag: str,
) -> list[CertificateProblem]:  # fmt: skip
    """Likely causes only: the chain's other certificates, and the chain to ``roots``."""
    found = [
        f"{flag}: the chain's certificate {c.subject.rfc4514_string()} is valid only from "
        f"{_utc(c.not_valid_before_utc)} to {_utc(c.not_valid_after_utc)}"
        for c in identity.chain[1:]
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc
    ]
    if roots and not found:
        verifier = (
            PolicyBuilder().store(Store(list(roots))).time(now)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
            )
            .build_client_verifier()
        )  # fmt: skip
        try:
            verifier.verify(identity.leaf, list(identity.chain[1:]))
        except VerificationError as error:
            found.append(
                f"{flag}: certificate does not chain to a CA in {roots_flag} ({error}); a link "
                "with a separate client CA may trust it all the same"
            )
    return [CertificateProblem(message, definite=False) for message in found]


def check_own_certificate(
    identity: TlsIdentity,
    now: datetime,
    *,
    cert_flag: str,
    roots: Sequence[x509.Certificate] | None = None,
    roots_flag: str = "--root-certificates",
) -> CertificateCheck:
    """Everything a client can find out about its own certificate without the link.

    Definite causes (every link refuses them at the TLS handshake, where the client sees only
    "Socket closed"): the leaf's dates, a key usage without digitalSignature, an extended key
    usage without clientAuth, a key that does not match. Likely causes: an intermediate outside
    its dates, a chain that does not lead to ``roots`` (the CA bundle that verifies the link;
    a link may trust another CA for clients, so this is not a certainty).
    """
    problems = _leaf_problems(identity, now, cert_flag)
    problems += _chain_problems(identity, now, cert_flag, roots, roots_flag)
    checked = "dates, key usage, key, " + (
        f"chain to {roots_flag}" if roots else f"not the chain (no {roots_flag})"
    )
    return CertificateCheck(tuple(problems), checked)


def check_client_certificate(identity: TlsIdentity, now: datetime, *, cert_flag: str) -> None:
    """Refuse, with the reason, a client certificate that any link would refuse at once.

    A link refuses these at the TLS handshake, where the client sees only "socket closed".
    """
    definite = check_own_certificate(identity, now, cert_flag=cert_flag).definite
    if definite is not None:
        raise InputError(definite.message)


def server_credentials(
    identity: TlsIdentity, *, client_ca_pem: bytes | None, require_client_auth: bool
) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.chain_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=require_client_auth,
    )


def no_root_certificates(missing: str, give: str) -> InputError:
    """The one refusal of a TLS client without a CA bundle: what is missing, what to give."""
    return InputError(
        f"{missing}: give {give}, the CA bundle that signed the link's certificate; without it "
        "grpc would trust its own bundled public CAs (to trust this machine's CA store, give "
        "its file, e.g. /etc/ssl/certs/ca-certificates.crt)"
    )


def channel_credentials(
    root_certificates_pem: bytes, identity: TlsIdentity | None
) -> grpc.ChannelCredentials:
    """TLS to the link, verified with ``root_certificates_pem`` (an explicit CA bundle)."""
    if not root_certificates_pem:
        # grpc treats None or b"" as "its bundled public roots": never let that through.
        raise ValueError("channel_credentials needs the CA bundle that verifies the link")
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=root_certificates_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.chain_pem,
    )
