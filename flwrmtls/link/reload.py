"""The link's TLS material, re-read when its files change, without a restart.

Rules:

* The server certificate chain and key, the CA bundle(s) and the CRL files are watched by
  content (read and hashed about once a second), so replacing a file, rewriting it, or swapping
  the ``..data`` symlink Kubernetes uses for mounted secrets are all noticed.
* New material is checked before use (PEM parses, key matches certificate, CA bundle holds a
  certificate). A broken new file is reported once and the last good material stays in use;
  fixing the file is picked up on the next poll.
* New server material reaches new handshakes through grpc's dynamic credentials fetcher; open
  connections keep theirs and are not dropped. A new client CA bundle also replaces the
  certificate authenticator, so the next call on an open connection is judged against the new
  bundle: a node whose CA was removed is refused on its next call (CA rollover).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from flwrmtls.errors import InputError
from flwrmtls.wire.credentials import TlsIdentity, load_ca_bundle, load_tls_identity

__all__ = ["TlsFiles", "TlsMaterial", "TlsWatcher"]

log = logging.getLogger("flwrmtls.link.reload")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: Path
    keyfile: Path
    client_ca: Path | None
    """The bundle that verifies client certificates (None: no client authentication)."""
    client_ca_flag: str = "--ssl-ca-certfile"


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    identity: TlsIdentity
    client_ca_pem: bytes | None
    client_ca_certificates: tuple[x509.Certificate, ...]

    def server_configuration(
        self, *, client_certificates: bool
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.identity.key_pem, self.identity.chain_pem)],
            root_certificates=self.client_ca_pem if client_certificates else None,
        )


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        return f"unreadable: {error.strerror}"


def load_material(files: TlsFiles) -> TlsMaterial:
    identity = load_tls_identity(
        files.certfile, files.keyfile, cert_flag="--ssl-certfile", key_flag="--ssl-keyfile"
    )
    if files.client_ca is None:
        return TlsMaterial(identity, None, ())
    pem, certificates = load_ca_bundle(files.client_ca, files.client_ca_flag)
    return TlsMaterial(identity, pem, tuple(certificates))


class TlsWatcher:
    """Polls the files; on a valid change, swaps the material and calls ``on_client_ca``."""

    def __init__(
        self,
        files: TlsFiles,
        material: TlsMaterial,
        *,
        on_client_ca: Callable[[TlsMaterial], None],
    ) -> None:
        self.files = files
        self.material = material
        self._on_client_ca = on_client_ca
        self._seen = self._fingerprint()
        self._listeners: set[str] = set()
        self._pending: set[str] = set()
        """Listeners that have not fetched the newest material yet."""
        self.generation = 0

    def _paths(self) -> list[Path]:
        paths = [self.files.certfile, self.files.keyfile]
        if self.files.client_ca is not None:
            paths.append(self.files.client_ca)
        return paths

    def _fingerprint(self) -> tuple[str, ...]:
        return tuple(_digest(path) for path in self._paths())

    def poll(self) -> bool:
        """Re-read the files if their content changed; True when new material is in use."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            material = load_material(self.files)
        except InputError as error:
            log.error("TLS files changed but cannot be used, keeping the last good: %s", error)
            return False
        ca_changed = material.client_ca_pem != self.material.client_ca_pem
        self.material = material
        self.generation += 1
        self._pending = set(self._listeners)
        leaf = material.identity.leaf
        log.info(
            "TLS material reloaded: server certificate serial %x valid until %s%s",
            leaf.serial_number, f"{leaf.not_valid_after_utc:%Y-%m-%d}",
            f"; client CA bundle: {len(material.client_ca_certificates)} certificate(s)"
            if ca_changed else "",
        )  # fmt: skip
        if ca_changed:
            self._on_client_ca(material)
        return True

    def fetcher(
        self, listener: str, *, client_certificates: bool
    ) -> Callable[[], grpc.ServerCertificateConfiguration]:
        """grpc's certificate-configuration fetcher for one listener.

        grpc calls it before each new handshake; None keeps the current material.
        """
        name = listener
        self._listeners.add(name)

        def fetch() -> grpc.ServerCertificateConfiguration:
            if name not in self._pending:
                return None  # type: ignore[return-value]  # grpc: None keeps the current
            self._pending.discard(name)
            return self.material.server_configuration(client_certificates=client_certificates)

        return fetch
