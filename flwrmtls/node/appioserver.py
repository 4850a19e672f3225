"""The node serves ClientAppIo (:mod:`flwrmtls.appio.clientappio`) to its ClientApp processes.

Rules:

* On loopback only: run tokens cross it in plaintext (an address off loopback is refused
  before anything listens).
* Behind the same interceptor and policy table as the link's APIs, with the run-token
  authenticator, the same request bounds, and the error catalogue's answers
  (:mod:`flwrmtls.wire.refusals`).
* It runs as a grpc.aio server on the node's event loop, the one its runs live on
  (:mod:`flwrmtls.node.clientapps`); once it listens, ClientApps may start.
"""

from __future__ import annotations

import grpc
import grpc.aio

from flwrmtls.appio.clientappio import ClientAppIoServicer
from flwrmtls.auth.interceptor import AuthInterceptor
from flwrmtls.auth.refusallog import RefusalLog
from flwrmtls.auth.tokens import TokenAuthenticator
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.node.clientapps import ClientApps
from flwrmtls.proto import appio_pb2_grpc
from flwrmtls.wire.listen import ServerLimits, require_loopback
from flwrmtls.wire.refusals import RefusalInterceptor
from flwrmtls.wire.validate import RequestBoundsInterceptor

__all__ = ["ClientAppIoServer"]


class ClientAppIoServer:
    """ClientAppIo on ``address`` (loopback only: run tokens cross it in plaintext), served
    on the running event loop."""

    def __init__(self, apps: ClientApps, address: str, clock: Clock | None = None) -> None:
        self._apps = apps
        self._address = address
        self._clock = clock or SystemClock()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        require_loopback(self._address, "--clientappio-api-address", "ClientAppIo")
        tokens = TokenAuthenticator(self._apps.tokens.lookup)
        interceptor = AuthInterceptor(
            lambda: tokens, self._clock, RefusalLog(self._clock), serves="ClientAppIo"
        )
        server = grpc.aio.server(
            interceptors=[interceptor, RequestBoundsInterceptor(), RefusalInterceptor()],
            options=ServerLimits().options(),
        )
        appio_pb2_grpc.add_ClientAppIoServicer_to_server(ClientAppIoServicer(self._apps), server)
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self._address}")
        await server.start()
        self._server = server
        host = self._address.rpartition(":")[0] or "127.0.0.1"
        self._apps.listen(f"{host}:{self.port}")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)
