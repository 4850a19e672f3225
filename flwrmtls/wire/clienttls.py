"""A client's TLS to the link, set up in one place: the CLI's, the node's and the tests' clients.

Rules:

* TLS needs the CA bundle that verifies the link, given explicitly: without one the client is
  refused before anything connects (:func:`~flwrmtls.wire.credentials.no_root_certificates`),
  never left to grpc's bundled public CAs. A client certificate comes with its key, or neither
  is given.
* Everything is read and checked before the first call: the bundle, the certificate and key
  (they belong together), and the certificate's definite causes of refusal (its dates, its
  usage: :func:`~flwrmtls.wire.credentials.check_client_certificate`). Each error names the
  flag or the profile key it came from (:class:`ClientNames`).
* The certificate presented may change while the client runs (a node's rotation):
  :attr:`ClientTls.identity` is the one in use, channels are built for it, and
  :meth:`ClientTls.check` judges it at the moment asked; the connection context runs that
  check when the link closes a handshake without a word (:mod:`flwrmtls.wire.errors`).
* Plaintext is the caller's explicit choice (``--insecure``, ``insecure = true``), never a
  fallback of this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import InputError
from flwrmtls.wire.credentials import (
    CertificateCheck,
    TlsIdentity,
    channel_credentials,
    check_client_certificate,
    check_own_certificate,
    load_ca_bundle,
    load_tls_identity,
)
from flwrmtls.wire.errors import ConnectionContext

__all__ = ["NODE_NAMES", "ClientNames", "ClientTls", "load_client_tls"]

ChannelOptions = Sequence[tuple[str, object]]


@dataclass(frozen=True, slots=True)
class ClientNames:
    """How a client's TLS inputs are named in its messages: flags, or a profile's keys."""

    roots: str
    cert: str
    key: str
    pair: str
    """The certificate and key together ("give both PAIR, or neither")."""


NODE_NAMES = ClientNames(
    roots="--root-certificates",
    cert="--ssl-client-certfile",
    key="--ssl-client-keyfile",
    pair="--ssl-client-certfile and --ssl-client-keyfile",
)
"""A node's flags (``flwrmtls-supernode``)."""


@dataclass(slots=True)
class ClientTls:
    """TLS to the link at ``address``, checked: the bundle that verifies the link, and the
    certificate this client presents (None: none)."""

    address: str
    roots_pem: bytes
    roots: list[x509.Certificate]
    roots_file: str
    """The bundle's file, for messages."""
    identity: TlsIdentity | None
    """The certificate presented now (a rotation replaces it)."""
    names: ClientNames
    clock: Clock
    self_check: bool = True
    """Whether the client judges its own certificate when a handshake is closed (False only for
    the tests' certificates given as raw PEM, which a real client would refuse to load)."""

    def check(self) -> CertificateCheck:
        """What this client finds, now, about the certificate it presents."""
        if self.identity is None:
            raise ValueError("no client certificate to check")
        return check_own_certificate(
            self.identity, self.clock.now(), cert_flag=self.names.cert, roots=self.roots,
            roots_flag=self.names.roots,
        )  # fmt: skip

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.roots_pem, self.identity)

    def channel(self, options: ChannelOptions = ()) -> grpc.Channel:
        """A channel presenting :attr:`identity` (as it is when called)."""
        return grpc.secure_channel(self.address, self.credentials(), options=list(options))

    def context(self) -> ConnectionContext:
        """What :func:`~flwrmtls.wire.errors.translate_rpc_error` needs to name a cause."""
        judged = self.identity is not None and self.self_check
        return ConnectionContext(
            self.address, tls=True, has_client_certificate=self.identity is not None,
            root_certificates=self.roots_file, client_flags=self.names.pair,
            check_certificate=self.check if judged else None,
        )  # fmt: skip


def load_client_tls(
    address: str,
    *,
    roots: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    names: ClientNames,
    no_roots: InputError,
    clock: Clock | None = None,
    check_at_start: bool = True,
) -> ClientTls:
    """Read and check a client's TLS files (see the rules); ``no_roots``: the error when no
    bundle is given, naming where to give one. ``check_at_start`` False: load a certificate
    a client would refuse at start-up (tests of what the link does with it)."""
    if (certfile is None) != (keyfile is None):
        raise InputError(f"give both {names.pair}, or neither")
    if roots is None:
        raise no_roots
    clock = clock or SystemClock()
    roots_pem, root_certificates = load_ca_bundle(roots, names.roots)
    identity = None
    if certfile is not None and keyfile is not None:
        identity = load_tls_identity(certfile, keyfile, cert_flag=names.cert, key_flag=names.key)
        if check_at_start:
            check_client_certificate(identity, clock.now(), cert_flag=names.cert)
    return ClientTls(
        address, roots_pem, root_certificates, str(roots), identity, names, clock
    )  # fmt: skip
