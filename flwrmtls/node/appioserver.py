"""The node serves ClientAppIo (:mod:`flwrmtls.appio.clientappio`) to its ClientApp processes.

Rules:

* On loopback only: run tokens cross it in plaintext (an address off loopback is refused
  before anything listens).
* Behind the same interceptor and policy table as the link's APIs, with the run-token
  authenticator, the same request bounds, and the error catalogue's answers
  (:mod:`flwrmtls.wire.refusals`).
* It runs as a grpc.aio server on an event loop thread of its own.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import grpc.aio

from flwrmtls.appio.clientappio import ClientAppIoServicer
from flwrmtls.auth.interceptor import AuthInterceptor, RefusalLog
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
    from a background thread."""

    def __init__(self, apps: ClientApps, address: str, clock: Clock | None = None) -> None:
        self._apps = apps
        self._address = address
        self._clock = clock or SystemClock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="clientappio",
                                        daemon=True)  # fmt: skip
        self._server: grpc.aio.Server | None = None
        self.port = 0

    def start(self) -> None:
        require_loopback(self._address, "--clientappio-api-address", "ClientAppIo")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        host = self._address.rpartition(":")[0] or "127.0.0.1"
        self._apps.clientappio_address = f"{host}:{self.port}"

    async def _start(self) -> None:
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

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(1.0), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
