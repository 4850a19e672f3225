"""A real link on 127.0.0.1 with ports chosen by the OS, for tests and benchmarks.

The link runs its own event loop in a background thread, so a test drives it with ordinary
blocking gRPC clients, as a node or the CLI would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.callsigning import CallSigner
from flwrmtls.auth.identity import IdentitySource
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.clock import Clock
from flwrmtls.errors import InputError
from flwrmtls.fleet.client import FleetClient
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.server import Link
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.wire.clienttls import NODE_NAMES, load_client_tls
from flwrmtls.wire.credentials import (
    TlsIdentity,
    load_ca_bundle,
    load_tls_identity,
)

__all__ = ["FleetListener", "key_node_client", "mtls_config", "node_client", "running_link"]


def mtls_config(
    database: Path,
    *,
    server_chain: Path,
    server_key: Path,
    client_ca: Path,
    crl: Path | None = None,
    identity_source: IdentitySource = IdentitySource.SUBJECT,
    max_chain_depth: int | None = None,
    require_client_auth: bool = True,
    heartbeat_interval: float = 10.0,
) -> LinkConfig:
    """A link configuration as the flags would build it, listening on loopback port 0."""
    client_ca_pem, client_cas = load_ca_bundle(client_ca, "client CA")
    return LinkConfig(
        database=database,
        fleet_address="127.0.0.1:0",
        control_address="127.0.0.1:0",
        tls=load_tls_identity(server_chain, server_key, cert_flag="server", key_flag="key"),
        client_ca_pem=client_ca_pem if require_client_auth else None,
        client_ca_certificates=client_cas if require_client_auth else [],
        require_client_auth=require_client_auth,
        crl_path=crl,
        identity_source=identity_source,
        max_chain_depth=max_chain_depth,
        heartbeat_interval=heartbeat_interval,
        serverappio_address="127.0.0.1:0",
        node_auth=NodeAuth.CERTIFICATE if require_client_auth else NodeAuth.NONE,
    )


@contextmanager
def running_link(config: LinkConfig, clock: Clock | None = None) -> Iterator[Link]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="link-loop", daemon=True)
    thread.start()
    try:
        link = Link(config, clock)  # may refuse its configuration (InputError)
    except BaseException:
        _stop_loop(loop, thread)
        raise
    try:
        asyncio.run_coroutine_threadsafe(link.start(), loop).result(timeout=30)
        yield link
    finally:
        asyncio.run_coroutine_threadsafe(link.stop(0), loop).result(timeout=30)
        _stop_loop(loop, thread)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


_LOCALHOST = [("grpc.ssl_target_name_override", "localhost")]
"""The test PKI's server certificate names localhost; the tests connect to 127.0.0.1."""


class FleetListener(Protocol):
    """Where a link's Fleet API listens: a :class:`Link` here, or a link process."""

    @property
    def fleet_port(self) -> int: ...


def node_client(
    link: FleetListener,
    *,
    root_certificates: Path,
    chain: Path | None = None,
    key: Path | None = None,
    chain_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> tuple[FleetClient, grpc.Channel]:
    """A Fleet client for ``link`` presenting a certificate from files or from PEM bytes.

    PEM bytes are passed to grpc as given (no checks), to present certificates a real node
    would refuse to load; files go through the node's own loader, and, as a node does, its own
    check of its certificate (against ``root_certificates``) when the link closes a handshake.
    """
    tls = load_client_tls(
        f"127.0.0.1:{link.fleet_port}", roots=root_certificates, certfile=chain, keyfile=key,
        names=NODE_NAMES, no_roots=InputError("no root certificates"), check_at_start=False,
    )  # fmt: skip
    if chain_pem is not None and key_pem is not None:
        tls.identity = TlsIdentity(chain_pem=chain_pem, key_pem=key_pem, chain=())
        tls.self_check = False
    channel = tls.channel(_LOCALHOST)
    return FleetClient(channel, tls.context()), channel


def key_node_client(
    link: FleetListener,
    *,
    root_certificates: Path,
    key: ec.EllipticCurvePrivateKey,
    port: int | None = None,
    chain: Path | None = None,
    chain_key: Path | None = None,
) -> tuple[FleetClient, grpc.Channel]:
    """A Fleet client for ``link`` signing every call with the EC ``key``, as an EC-key node
    does: for the server key it learns from its own TLS handshake, re-learned when refused as
    ``wrong-audience``. ``port``: another listener (``link.key_fleet_port``); ``chain`` and
    ``chain_key``: a client certificate too (certificate+key). The channel returned signs."""
    tls = load_client_tls(
        f"127.0.0.1:{port or link.fleet_port}", roots=root_certificates, certfile=chain,
        keyfile=chain_key, names=NODE_NAMES, no_roots=InputError("no root certificates"),
        check_at_start=False,
    )  # fmt: skip
    tls.self_check = False
    client_files = (chain, chain_key) if chain is not None and chain_key is not None else None
    audience = LinkAudience(
        tls.address, tls.roots_pem, client_files, server_name="localhost",
        roots_name=tls.roots_file,
    )  # fmt: skip
    channel = grpc.intercept_channel(
        tls.channel(_LOCALHOST), SigningInterceptor(CallSigner(key), audience.current)
    )
    return FleetClient(channel, tls.context(), relearn_audience=audience.relearn), channel
