"""The link: composition only. Wires credentials, authenticator, state and servicers together.

Two grpc.aio servers in one event loop (no thread per connection): the Fleet API for nodes and
the Control API for the CLI, each on its own address, both behind the same authenticator and
policy table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from cryptography import x509

from flwrmtls.auth.authenticator import Authenticator, OpenAuthenticator
from flwrmtls.auth.identity import IdentitySource
from flwrmtls.auth.interceptor import AuthInterceptor, RefusalLog
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.revocation import RevocationStore
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.control.servicer import ControlServicer
from flwrmtls.fleet.servicer import FleetServicer
from flwrmtls.proto import control_pb2_grpc, fleet_pb2_grpc
from flwrmtls.state.linkstate import LinkState
from flwrmtls.wire.credentials import TlsIdentity, server_credentials

__all__ = ["Link", "LinkConfig"]

log = logging.getLogger("flwrmtls.link")

_CRL_POLL_SECONDS = 1.0


@dataclass
class LinkConfig:
    database: Path | str
    fleet_address: str = "0.0.0.0:9092"
    control_address: str = "0.0.0.0:9093"
    tls: TlsIdentity | None = None
    """Server certificate chain and key; None only with ``insecure``."""
    client_ca_pem: bytes | None = None
    client_ca_certificates: list[x509.Certificate] = field(default_factory=list)
    require_client_auth: bool = False
    crl_path: Path | None = None
    identity_source: IdentitySource = IdentitySource.SUBJECT
    max_chain_depth: int | None = None
    heartbeat_interval: float = 10.0
    insecure: bool = False


def build_authenticator(config: LinkConfig, revocations: RevocationStore | None) -> Authenticator:
    if not config.require_client_auth:
        return OpenAuthenticator()
    return MtlsAuthenticator(
        config.client_ca_certificates,
        revocations=revocations,
        identity_source=config.identity_source,
        max_chain_depth=config.max_chain_depth,
    )


def check_bindable(address: str) -> None:
    """Raise OSError naming ``address`` if it cannot be listened on (before grpc tries and logs)."""
    host, _, port_text = address.rpartition(":")
    bind_host = host.strip("[]") or None
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(
            bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, socket.gaierror) as error:
        raise OSError(f"{address} is not a usable host:port ({error})") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                raise OSError(f"cannot listen on {address}: {error.strerror}") from None


class Link:
    """A running link. ``await start()``, read the bound ports, ``await stop()``."""

    def __init__(self, config: LinkConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.state = LinkState(config.database)
        self.revocations = RevocationStore(config.crl_path) if config.crl_path else None
        self.authenticator = build_authenticator(config, self.revocations)
        self._interceptor = AuthInterceptor(
            lambda: self.authenticator, self.clock, RefusalLog(self.clock)
        )
        self._servers: list[grpc.aio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.fleet_port = 0
        self.control_port = 0

    def _credentials(self) -> grpc.ServerCredentials | None:
        if self.config.insecure:
            return None
        assert self.config.tls is not None
        return server_credentials(
            self.config.tls,
            client_ca_pem=self.config.client_ca_pem if self.config.require_client_auth else None,
            require_client_auth=self.config.require_client_auth,
        )

    def _server(self, address: str) -> tuple[grpc.aio.Server, int]:
        check_bindable(address)
        # grpc turns SO_REUSEPORT on by default: two links could then share one port silently.
        server = grpc.aio.server(
            interceptors=[self._interceptor], options=[("grpc.so_reuseport", 0)]
        )
        credentials = self._credentials()
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return server, port

    async def start(self) -> None:
        fleet, self.fleet_port = self._server(self.config.fleet_address)
        fleet_pb2_grpc.add_FleetServicer_to_server(
            FleetServicer(self.state, self.clock, self.config.heartbeat_interval), fleet
        )
        control, self.control_port = self._server(self.config.control_address)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlServicer(self.state, self.clock), control
        )
        self._servers = [fleet, control]
        for server in self._servers:
            await server.start()
        if self.revocations is not None:
            self._tasks.append(asyncio.create_task(self._watch_crls(self.revocations)))

    async def _watch_crls(self, store: RevocationStore) -> None:
        while True:
            await asyncio.sleep(_CRL_POLL_SECONDS)
            store.refresh()

    async def wait(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers))

    async def stop(self, grace: float = 2.0) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self.state.close()
