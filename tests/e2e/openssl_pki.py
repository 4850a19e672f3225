"""Certificates made with the openssl CLI, to show the link accepts what other tools issue.

Rules kept here:

* Every file is written by ``openssl`` itself (run through subprocess); nothing here parses or
  builds certificates.
* A root CA (``CA:TRUE``, self-signed), intermediate CAs under it (``CA:TRUE, pathlen:0``) and
  client leaves (``CA:FALSE``, keyUsage ``digitalSignature``, EKU ``clientAuth``) with
  SKI and AKI, SHA-256, the same profiles as tests/pki/data/openssl-recipe.sh.
* Keys are EC P-256 or RSA 2048, generated as PKCS#8 and converted when asked: SEC1 with
  ``openssl ec`` (EC keys) and PKCS#1 with ``openssl rsa -traditional`` (RSA keys). The PEM
  header of each key file is checked, so a test can rely on the encoding it asked for.
* A leaf's chain file holds the leaf, then the intermediates up to (not including) the root:
  what a node presents.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KEY_PEM_HEADERS", "KeyAlgorithm", "KeyFormat", "OpensslCa", "OpensslLeaf", "OpensslPki"]

_EXTENSIONS = """\
[root_ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[intermediate_ca]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[client]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
"""


class KeyAlgorithm(enum.StrEnum):
    EC = "ec"
    RSA = "rsa"


class KeyFormat(enum.StrEnum):
    PKCS8 = "pkcs8"
    SEC1 = "sec1"
    PKCS1 = "pkcs1"


KEY_PEM_HEADERS = {
    KeyFormat.PKCS8: b"-----BEGIN PRIVATE KEY-----",
    KeyFormat.SEC1: b"-----BEGIN EC PRIVATE KEY-----",
    KeyFormat.PKCS1: b"-----BEGIN RSA PRIVATE KEY-----",
}
"""The first line of a key file in each encoding."""

_FORMAT_ALGORITHM = {KeyFormat.SEC1: KeyAlgorithm.EC, KeyFormat.PKCS1: KeyAlgorithm.RSA}


@dataclass(frozen=True, slots=True)
class OpensslCa:
    certificate: Path
    key: Path
    chain: tuple[Path, ...]
    """The CA certificates a leaf under this CA sends after itself: this CA and the
    intermediates above it, never the root."""


@dataclass(frozen=True, slots=True)
class OpensslLeaf:
    certificate: Path
    """The leaf alone."""
    chain: Path
    """The leaf, then its intermediates: what a node presents."""
    key: Path


class OpensslPki:
    """CAs and client certificates in ``directory``, each made by the openssl CLI."""

    def __init__(self, directory: Path) -> None:
        self._openssl = shutil.which("openssl")
        if self._openssl is None:
            raise RuntimeError("the openssl CLI is not on PATH; install OpenSSL 3 to run this")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._extensions = self.directory / "extensions.cnf"
        self._extensions.write_text(_EXTENSIONS, encoding="utf-8")

    def _run(self, *args: str | Path) -> None:
        assert self._openssl is not None
        command = [self._openssl, *(str(arg) for arg in args)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")

    def _key(self, name: str, algorithm: KeyAlgorithm, key_format: KeyFormat) -> Path:
        required = _FORMAT_ALGORITHM.get(key_format)
        if required is not None and required is not algorithm:
            raise ValueError(f"a {key_format.value} key file holds only {required.value} keys")
        pkcs8 = self.directory / f"{name}.pkcs8.key"
        parameter = (
            "ec_paramgen_curve:P-256" if algorithm is KeyAlgorithm.EC else "rsa_keygen_bits:2048"
        )
        self._run(
            "genpkey", "-algorithm", algorithm.value.upper(), "-pkeyopt", parameter, "-out", pkcs8
        )
        key = self.directory / f"{name}.key"
        if key_format is KeyFormat.PKCS8:
            pkcs8.rename(key)
        elif key_format is KeyFormat.SEC1:
            self._run("ec", "-in", pkcs8, "-out", key)
        else:
            self._run("rsa", "-in", pkcs8, "-traditional", "-out", key)
        if not key.read_bytes().startswith(KEY_PEM_HEADERS[key_format]):
            raise RuntimeError(f"openssl wrote {key} in another encoding than {key_format.value}")
        return key

    def _sign(
        self,
        name: str,
        subject: str,
        key: Path,
        extensions: str,
        issuer: OpensslCa | None,
        days: int,
    ) -> Path:
        request = self.directory / f"{name}.csr"
        certificate = self.directory / f"{name}.crt"
        self._run("req", "-new", "-key", key, "-subj", subject, "-out", request)
        signer: tuple[str | Path, ...] = (
            ("-key", key) if issuer is None else ("-CA", issuer.certificate, "-CAkey", issuer.key)
        )
        self._run(
            "x509",
            "-req",
            "-in",
            request,
            *signer,
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            self._extensions,
            "-extensions",
            extensions,
            "-out",
            certificate,
        )
        return certificate

    def root_ca(self, name: str, *, days: int = 30) -> OpensslCa:
        """A self-signed root ``CN=<name>`` with an EC key."""
        key = self._key(name, KeyAlgorithm.EC, KeyFormat.PKCS8)
        certificate = self._sign(name, f"/CN={name}", key, "root_ca", None, days)
        return OpensslCa(certificate=certificate, key=key, chain=())

    def intermediate_ca(self, issuer: OpensslCa, name: str, *, days: int = 30) -> OpensslCa:
        """An intermediate ``CN=<name>`` (pathlen 0) signed by ``issuer``, with an EC key."""
        key = self._key(name, KeyAlgorithm.EC, KeyFormat.PKCS8)
        certificate = self._sign(name, f"/CN={name}", key, "intermediate_ca", issuer, days)
        return OpensslCa(certificate=certificate, key=key, chain=(certificate, *issuer.chain))

    def client_certificate(
        self,
        issuer: OpensslCa,
        name: str,
        *,
        subject: str,
        algorithm: KeyAlgorithm = KeyAlgorithm.EC,
        key_format: KeyFormat = KeyFormat.PKCS8,
        days: int = 30,
    ) -> OpensslLeaf:
        """A client leaf with ``subject`` in openssl's form (``/O=Hospital A/CN=node-1``)."""
        key = self._key(name, algorithm, key_format)
        certificate = self._sign(name, subject, key, "client", issuer, days)
        chain = self.directory / f"{name}.pem"
        chain.write_bytes(b"".join(path.read_bytes() for path in (certificate, *issuer.chain)))
        return OpensslLeaf(certificate=certificate, chain=chain, key=key)
