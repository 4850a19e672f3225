"""The link's TLS material, re-read when its files change, without a restart.

Rules:

* The server certificate chain and key, the CA bundle(s) and the CRL files are watched by
  content (read and hashed about once a second: :mod:`flwrmtls.filewatch`), so replacing a
  file, rewriting it, or swapping the ``..data`` symlink Kubernetes uses for mounted secrets
  are all noticed.
* New material is checked before use (PEM parses, key matches certificate, CA bundle holds a
  certificate). A broken new file is reported once and the last good material stays in use;
  fixing the file is picked up on the next poll.
* New server material reaches new handshakes through grpc's dynamic credentials fetcher; open
  connections keep theirs and are not dropped. A new client (or CLI) CA bundle also replaces
  the certificate authenticators, so the next call on an open connection is judged against the
  new bundle: a node whose CA was removed is refused on its next call (CA rollover), and its
  open calls are judged again at once.
* A new server *key* (not a renewed certificate with the same key) is reported too: EC-key
  signatures name the link's server key (their audience), and the link keeps accepting the
  previous one for a bounded time.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from flwrmtls.errors import InputError
from flwrmtls.filewatch import FileWatch
from flwrmtls.wire.credentials import TlsIdentity, load_ca_bundle, load_tls_identity

__all__ = ["TlsFiles", "TlsMaterial", "TlsWatcher", "Trust"]

log = logging.getLogger("flwrmtls.link.reload")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: Path
    keyfile: Path
    client_ca: Path | None
    """The bundle that verifies node certificates (None: no client authentication)."""
    client_ca_flag: str = "--ssl-ca-certfile"
    cli_ca: Path | None = None
    """The bundle that verifies CLI certificates on the Control API, when it is not
    ``client_ca`` (``--ssl-cli-ca-certfile``)."""


class Trust(enum.Enum):
    """Which client certificates a listener asks for at the handshake."""

    NONE = "none"
    NODES = "nodes"
    """The client CA bundle (Fleet)."""
    CLI = "cli"
    """The CLI CA bundle (Control)."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    identity: TlsIdentity
    client_ca_pem: bytes | None
    client_ca_certificates: tuple[x509.Certificate, ...]
    cli_ca_pem: bytes | None = None
    cli_ca_certificates: tuple[x509.Certificate, ...] = ()

    def roots(self, trust: Trust) -> bytes | None:
        return {Trust.NONE: None, Trust.NODES: self.client_ca_pem, Trust.CLI: self.cli_ca_pem}[
            trust
        ]

    def server_configuration(self, trust: Trust) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.identity.key_pem, self.identity.chain_pem)], root_certificates=self.roots(trust)
        )


def load_material(files: TlsFiles) -> TlsMaterial:
    identity = load_tls_identity(
        files.certfile, files.keyfile, cert_flag="--ssl-certfile", key_flag="--ssl-keyfile"
    )
    pem: bytes | None = None
    certificates: tuple[x509.Certificate, ...] = ()
    if files.client_ca is not None:
        pem, loaded = load_ca_bundle(files.client_ca, files.client_ca_flag)
        certificates = tuple(loaded)
    if files.cli_ca is None:
        return TlsMaterial(identity, pem, certificates, pem, certificates)
    cli_pem, cli = load_ca_bundle(files.cli_ca, "--ssl-cli-ca-certfile")
    return TlsMaterial(identity, pem, certificates, cli_pem, tuple(cli))


class TlsWatcher:
    """Polls the files; on a valid change, swaps the material and calls ``on_client_ca``."""

    def __init__(
        self,
        files: TlsFiles,
        material: TlsMaterial,
        *,
        on_trust: Callable[[TlsMaterial], None],
        on_server_key: Callable[[TlsMaterial], None] = lambda material: None,
    ) -> None:
        """``on_trust``: called with the new material when a client or CLI CA bundle changed."""
        self.files = files
        self.material = material
        self._on_trust = on_trust
        self._on_server_key = on_server_key
        self._files = FileWatch(self._paths())
        self._listeners: set[str] = set()
        self._pending: set[str] = set()
        """Listeners that have not fetched the newest material yet."""
        self.generation = 0

    def _paths(self) -> list[Path]:
        paths = [self.files.certfile, self.files.keyfile]
        paths += [path for path in (self.files.client_ca, self.files.cli_ca) if path is not None]
        return paths

    def poll(self) -> bool:
        """Re-read the files if their content changed; True when new material is in use."""
        if not self._files.changed():
            return False
        try:
            material = load_material(self.files)
        except InputError as error:
            log.error("TLS files changed but cannot be used, keeping the last good: %s", error)
            return False
        ca_changed = material.client_ca_pem != self.material.client_ca_pem
        cli_changed = material.cli_ca_pem != self.material.cli_ca_pem
        old_key = self.material.identity.leaf.public_key()
        key_changed = material.identity.leaf.public_key() != old_key
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
        if cli_changed and self.files.cli_ca is not None:
            log.info("CLI CA bundle: %d certificate(s)", len(material.cli_ca_certificates))
        if ca_changed or cli_changed:
            self._on_trust(material)
        if key_changed:
            self._on_server_key(material)
        return True

    def fetcher(
        self, listener: str, trust: Trust
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
            return self.material.server_configuration(trust)

        return fetch
