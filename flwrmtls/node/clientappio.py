"""ClientAppIo on the node: what a run's ClientApp process calls, with its run token.

It runs as a grpc.aio server on its own event loop thread, behind the same interceptor and
policy table as the link's APIs, with the run-token authenticator. Blocking work (waiting for
a message, talking to the link) runs in worker threads so one slow call never stalls another.
The run is the token's run: a ClientApp can see only its own run's messages and objects
(an object of another run is answered "no object", exactly as one that is not stored; see
:mod:`flwrmtls.node.apps`). What a ClientApp pushes, and what the node fetches from the link
for it, is bounded by ``--max-object-storage`` (``RESOURCE_EXHAUSTED``, naming the flag;
:mod:`flwrmtls.node.storage`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from flwrmtls.auth.interceptor import AuthInterceptor, RefusalLog, current_principal
from flwrmtls.auth.tokens import TokenAuthenticator
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import OverQuota
from flwrmtls.keyvalues import values_to_proto
from flwrmtls.node.apps import AppManager
from flwrmtls.objects.scope import ObjectScope, QuotaExceeded
from flwrmtls.objects.transfer import answer_missing, answer_pull, answer_push, fixed_scope
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, objects_pb2
from flwrmtls.wire.bounds import long_poll_seconds
from flwrmtls.wire.listen import ServerLimits, require_loopback
from flwrmtls.wire.validate import RequestBoundsInterceptor

__all__ = ["ClientAppIoServer", "ClientAppIoServicer"]

_Context = grpc.aio.ServicerContext[Any, Any]


def _run_id() -> int:
    run_id = current_principal().run_id
    assert run_id is not None, "the policy table admits only run tokens here"
    return run_id


class ClientAppIoServicer(appio_pb2_grpc.ClientAppIoServicer):
    def __init__(self, apps: AppManager) -> None:
        self._apps = apps

    def _scope(self) -> ObjectScope:
        """The objects of the caller's run (none once the node has forgotten the run)."""
        return self._apps.scope(_run_id())

    async def GetRun(
        self, request: appio_pb2.GetAppRunRequest, context: _Context
    ) -> appio_pb2.GetAppRunResponse:
        run = self._apps.run(_run_id())
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "run unknown to this node")
            raise AssertionError("unreachable")
        return appio_pb2.GetAppRunResponse(
            run_id=run.run_id,
            bundle_hash=run.bundle_hash,
            run_config=values_to_proto(run.run_config),
            node_config=values_to_proto(self._apps.node_config),
            node_id=self._apps.node_id,
            object_directory=str(self._apps.objects.directory.resolve())
            if self._apps.share_objects
            else "",
        )

    async def PullMessage(
        self, request: appio_pb2.PullAppMessageRequest, context: _Context
    ) -> appio_pb2.PullAppMessageResponse:
        wait = long_poll_seconds(request.wait_seconds)
        message, ended = await asyncio.to_thread(self._apps.next_message, _run_id(), wait)
        if message is None:
            return appio_pb2.PullAppMessageResponse(run_ended=ended)
        return appio_pb2.PullAppMessageResponse(message=message)

    async def PushReply(
        self, request: appio_pb2.PushReplyRequest, context: _Context
    ) -> appio_pb2.PushReplyResponse:
        try:
            await asyncio.to_thread(self._apps.forward_reply, _run_id(), request.reply)
        except PermissionError as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except OverQuota as error:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{error} (the ServerApp gets a LINK_ERROR reply instead)",
            )
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except FlwrmtlsError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not reach the link: {error}")
        return appio_pb2.PushReplyResponse()

    async def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: _Context
    ) -> AsyncIterator[objects_pb2.ObjectChunk]:
        try:
            await asyncio.to_thread(
                self._apps.ensure_object, _run_id(), request.object_id, verify=True
            )
        except QuotaExceeded as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except (ValueError, FlwrmtlsError) as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"object unavailable: {error}")
        scope = self._scope()
        async for chunk in answer_pull(self._apps.objects, scope, request.object_id, context):
            yield chunk

    async def PrepareObjects(
        self, request: appio_pb2.PrepareObjectsRequest, context: _Context
    ) -> appio_pb2.PrepareObjectsResponse:
        try:
            await asyncio.to_thread(self._apps.ensure_objects, _run_id(), list(request.object_ids))
        except QuotaExceeded as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except (ValueError, FlwrmtlsError) as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"object unavailable: {error}")
        return appio_pb2.PrepareObjectsResponse()

    async def PushObject(
        self, request_iterator: AsyncIterator[objects_pb2.ObjectChunk], context: _Context
    ) -> objects_pb2.PushObjectResponse:
        scope = fixed_scope(self._scope())
        response, _ = await answer_push(self._apps.objects, request_iterator, context, scope)
        return response

    async def MissingObjects(
        self, request: objects_pb2.MissingObjectsRequest, context: _Context
    ) -> objects_pb2.MissingObjectsResponse:
        return await answer_missing(self._apps.objects, self._scope(), request.object_ids, context)


class ClientAppIoServer:
    """ClientAppIo on ``address`` (loopback only: run tokens cross it in plaintext), served
    from a background thread."""

    def __init__(self, apps: AppManager, address: str, clock: Clock | None = None) -> None:
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
            interceptors=[interceptor, RequestBoundsInterceptor()], options=ServerLimits().options()
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
