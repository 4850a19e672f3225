"""Certificates as cert-manager's CA issuer writes them, and Secrets as the kubelet mounts them.

Rules kept here:

* Every key and certificate is made by the openssl CLI (subprocess); nothing here builds one.
* Keys as cert-manager generates and encodes them (``spec.privateKey``): RSA 2048/4096,
  ECDSA P-256/P-384/P-521, Ed25519; ``encoding: PKCS1`` writes RSA keys as PKCS#1
  (``RSA PRIVATE KEY``), ECDSA keys as SEC1 (``EC PRIVATE KEY``) and Ed25519 keys as PKCS#8
  (there is no PKCS#1 form); ``encoding: PKCS8`` writes every key as PKCS#8
  (``PRIVATE KEY``). This is ``pki.EncodePrivateKey`` in cert-manager.
* Leaves carry what cert-manager's CA issuer signs for a Certificate with
  ``usages: [digital signature, key encipherment, client auth]`` (or ``server auth``):
  basicConstraints critical CA:FALSE, keyUsage critical, the EKU, the AKI of the issuer, no
  SKI, the Subject fields and SANs of the Certificate.
* ``tls.crt`` is the leaf then the issuing CA's chain below the root; ``ca.crt`` is the root:
  what the CA issuer writes for a root or an intermediate in its Secret.
* A Secret volume is laid out as the kubelet's AtomicWriter does: the files in a
  ``..<timestamp>`` directory, a ``..data`` symlink to it, and each key a symlink through
  ``..data``; an update writes a new timestamped directory and renames a new symlink over
  ``..data`` (one atomic step), then removes the old directory.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KEY_HEADERS",
    "CertManagerPki",
    "Issued",
    "KeySpec",
    "swap_secret",
    "write_secret",
]

_EXTENSIONS = """\
[root_ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[intermediate_ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[client]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = none
authorityKeyIdentifier = keyid:always

[server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = none
authorityKeyIdentifier = keyid:always
subjectAltName         = DNS:localhost, DNS:flwrmtls-link, IP:127.0.0.1
"""

KEY_HEADERS = {
    "RSA PRIVATE KEY": b"-----BEGIN RSA PRIVATE KEY-----",
    "EC PRIVATE KEY": b"-----BEGIN EC PRIVATE KEY-----",
    "PRIVATE KEY": b"-----BEGIN PRIVATE KEY-----",
}


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A Certificate's ``spec.privateKey``: algorithm, size, encoding."""

    algorithm: str
    """RSA, ECDSA or Ed25519."""
    size: int
    encoding: str
    """PKCS1 or PKCS8."""

    @property
    def label(self) -> str:
        size = "" if self.algorithm == "Ed25519" else f"-{self.size}"
        return f"{self.algorithm}{size}-{self.encoding}"

    @property
    def pem_type(self) -> str:
        """The PEM block type cert-manager writes for this key in ``tls.key``."""
        if self.encoding == "PKCS8" or self.algorithm == "Ed25519":
            return "PRIVATE KEY"
        return "RSA PRIVATE KEY" if self.algorithm == "RSA" else "EC PRIVATE KEY"


@dataclass(frozen=True, slots=True)
class Issued:
    """What cert-manager puts in a Certificate's Secret."""

    tls_crt: bytes
    tls_key: bytes
    ca_crt: bytes

    @property
    def files(self) -> dict[str, bytes]:
        return {"tls.crt": self.tls_crt, "tls.key": self.tls_key, "ca.crt": self.ca_crt}


class CertManagerPki:
    """A root CA (and optionally an intermediate issuing CA), as an Issuer's CA Secret."""

    def __init__(self, directory: Path, *, intermediate: bool = False) -> None:
        if shutil.which("openssl") is None:
            raise RuntimeError("the openssl CLI is not on PATH: install openssl to run this")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._config = directory / "extensions.cnf"
        self._config.write_text(_EXTENSIONS)
        self._names = itertools.count()
        root_key = self._key(KeySpec("ECDSA", 256, "PKCS8"))
        self.root = self._sign("/O=Federation/CN=federation-root", root_key, "root_ca", None)
        self._issuer = (self.root, root_key)
        self._chain = b""
        if intermediate:
            key = self._key(KeySpec("ECDSA", 256, "PKCS8"))
            certificate = self._sign(
                "/O=Federation/CN=federation-issuing", key, "intermediate_ca", self._issuer
            )
            self._issuer = (certificate, key)
            self._chain = certificate.read_bytes()

    @property
    def ca_crt(self) -> bytes:
        return self.root.read_bytes()

    def _run(self, *args: str | Path) -> None:
        command = ["openssl", *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")

    def _key(self, spec: KeySpec) -> Path:
        name = self.directory / f"key-{next(self._names)}"
        generated = name.with_suffix(".pkcs8")
        options: list[str] = {
            "RSA": ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{spec.size}"],
            "ECDSA": ["-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:P-{spec.size}"],
            "Ed25519": ["-algorithm", "ED25519"],
        }[spec.algorithm]
        self._run("genpkey", *options, "-out", generated)
        key = name.with_suffix(".key")
        if spec.pem_type == "RSA PRIVATE KEY":
            self._run("rsa", "-in", generated, "-traditional", "-out", key)
        elif spec.pem_type == "EC PRIVATE KEY":
            self._run("ec", "-in", generated, "-out", key)
        else:
            generated.rename(key)
        if not key.read_bytes().startswith(KEY_HEADERS[spec.pem_type]):
            raise RuntimeError(f"openssl wrote {key} in another encoding than {spec.pem_type}")
        return key

    def _sign(
        self, subject: str, key: Path, profile: str, issuer: tuple[Path, Path] | None
    ) -> Path:
        name = self.directory / f"cert-{next(self._names)}"
        request, certificate = name.with_suffix(".csr"), name.with_suffix(".crt")
        self._run("req", "-new", "-key", key, "-subj", subject, "-out", request)
        signer: list[str | Path] = ["-key", key]
        if issuer is not None:
            signer = ["-CA", issuer[0], "-CAkey", issuer[1]]
        self._run(
            "x509", "-req", "-in", request, *signer, "-days", "90", "-sha256",
            "-extfile", self._config, "-extensions", profile, "-out", certificate,
        )  # fmt: skip
        return certificate

    def issue(self, subject: str, spec: KeySpec, *, server: bool = False) -> Issued:
        """A Certificate's Secret: a new key every time (``rotationPolicy: Always``)."""
        key = self._key(spec)
        leaf = self._sign(subject, key, "server" if server else "client", self._issuer)
        return Issued(leaf.read_bytes() + self._chain, key.read_bytes(), self.ca_crt)


_stamps = itertools.count()


def _timestamped(directory: Path, files: Mapping[str, bytes], mode: int, gid: int | None) -> str:
    name = f"..2030_01_01_00_00_00.{next(_stamps):09d}"
    target = directory / name
    target.mkdir(mode=0o755)
    for file, data in files.items():
        path = target / file
        path.write_bytes(data)
        path.chmod(mode)
        if gid is not None:
            os.chown(path, 0, gid)
    return name


def write_secret(
    directory: Path, files: Mapping[str, bytes], *, mode: int = 0o440, gid: int | None = None
) -> Path:
    """A Secret volume as the kubelet mounts it (``defaultMode`` ``mode``, group ``gid``)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = _timestamped(directory, files, mode, gid)
    (directory / "..data").symlink_to(name)
    for file in files:
        (directory / file).symlink_to(f"..data/{file}")
    return directory


def swap_secret(
    directory: Path, files: Mapping[str, bytes], *, mode: int = 0o440, gid: int | None = None
) -> None:
    """The Secret updated as the kubelet does it: one rename swaps every file at once."""
    old = os.readlink(directory / "..data")
    name = _timestamped(directory, files, mode, gid)
    staged = directory / "..data_tmp"
    staged.symlink_to(name)
    staged.rename(directory / "..data")
    shutil.rmtree(directory / old)
