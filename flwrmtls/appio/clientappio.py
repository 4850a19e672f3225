"""ClientAppIo on the node: what a run's ClientApp process calls, with its run token.

Rules:

* The run is the token's run: a ClientApp can see only its own run's messages and objects
  (an object of another run is answered "no object", exactly as one that is not stored; see
  :mod:`flwrmtls.node.clientapps`).
* What a ClientApp pushes, and what the node fetches from the link for it, is bounded by
  ``--max-object-storage`` (``RESOURCE_EXHAUSTED``, naming the flag;
  :mod:`flwrmtls.node.storage`).
* The node's runs answer on the node's event loop (waiting for a message is a long poll, no
  thread); what blocks (talking to the link, hashing) they run in worker threads, so one slow
  call never stalls another.
* Refusals are the error catalogue's (:mod:`flwrmtls.wire.refusals`): ``no-object`` for
  arrays the node cannot provide, ``over-quota`` over its storage, ``foreign-message`` for a
  reply that answers nothing this node received, ``link-unreachable`` when the node cannot
  pass a reply on; the node's server answers them in one place.

The servicer converts and delegates to the node's runs (:class:`ClientAppRuns`, which
:class:`flwrmtls.node.clientapps.ClientApps` is); the node serves it
(:mod:`flwrmtls.node.appioserver`) behind the same interceptor and policy table as the link's
APIs, as the link serves :mod:`flwrmtls.appio.serverappio`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import grpc.aio

from flwrmtls.auth.caller import current_principal
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import OverQuota
from flwrmtls.keyvalues import Value, values_to_proto
from flwrmtls.objects.scope import ObjectScope, QuotaExceeded
from flwrmtls.objects.serving import answer_missing, answer_pull, answer_push, fixed_scope
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, objects_pb2
from flwrmtls.wire.bounds import long_poll_seconds
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["AppRun", "ClientAppIoServicer", "ClientAppRuns"]

_Context = grpc.aio.ServicerContext[Any, Any]


class AppRun(Protocol):
    """A run as the node knows it."""

    @property
    def run_id(self) -> int: ...
    @property
    def bundle_hash(self) -> str: ...
    @property
    def run_config(self) -> dict[str, Value]: ...


class ClientAppRuns(Protocol):
    """What ClientAppIo needs of the node's runs (:class:`flwrmtls.node.clientapps.ClientApps`)."""

    @property
    def objects(self) -> ObjectStore: ...
    @property
    def share_objects(self) -> bool: ...
    @property
    def node_config(self) -> dict[str, Value]: ...
    @property
    def node_id(self) -> int: ...

    def run(self, run_id: int) -> AppRun | None: ...
    def scope(self, run_id: int) -> ObjectScope: ...
    async def next_message(
        self, run_id: int, wait: float
    ) -> tuple[common_pb2.Message | None, bool]: ...
    async def forward_reply(self, run_id: int, reply: common_pb2.Message) -> None: ...
    async def ensure_object(self, run_id: int, object_id: str, *, verify: bool = False) -> None: ...
    async def ensure_objects(self, run_id: int, object_ids: list[str]) -> None: ...


def _run_id() -> int:
    run_id = current_principal().run_id
    assert run_id is not None, "the policy table admits only run tokens here"
    return run_id


class ClientAppIoServicer(appio_pb2_grpc.ClientAppIoServicer):
    def __init__(self, apps: ClientAppRuns) -> None:
        self._apps = apps

    def _scope(self) -> ObjectScope:
        """The objects of the caller's run (none once the node has forgotten the run)."""
        return self._apps.scope(_run_id())

    async def GetRun(
        self, request: appio_pb2.GetAppRunRequest, context: _Context
    ) -> appio_pb2.GetAppRunResponse:
        run = self._apps.run(_run_id())
        if run is None:
            raise CallRefused(Refusal.RUN_ENDED, "run unknown to this node")
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
        message, ended = await self._apps.next_message(_run_id(), wait)
        if message is None:
            return appio_pb2.PullAppMessageResponse(run_ended=ended)
        return appio_pb2.PullAppMessageResponse(message=message)

    async def PushReply(
        self, request: appio_pb2.PushReplyRequest, context: _Context
    ) -> appio_pb2.PushReplyResponse:
        try:
            await self._apps.forward_reply(_run_id(), request.reply)
        except PermissionError as error:
            raise CallRefused(Refusal.FOREIGN_MESSAGE, str(error)) from None
        except OverQuota as error:
            raise CallRefused(
                Refusal.OVER_QUOTA, f"{error} (the ServerApp gets a LINK_ERROR reply instead)"
            ) from None
        except ValueError as error:
            raise CallRefused(Refusal.INVALID_MESSAGE, str(error)) from None
        except FlwrmtlsError as error:
            raise CallRefused(
                Refusal.LINK_UNREACHABLE, f"could not reach the link: {error}"
            ) from None
        return appio_pb2.PushReplyResponse()

    async def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: _Context
    ) -> AsyncIterator[objects_pb2.ObjectChunk]:
        try:
            await self._apps.ensure_object(_run_id(), request.object_id, verify=True)
        except QuotaExceeded as error:
            raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None
        except (ValueError, FlwrmtlsError) as error:
            raise CallRefused(Refusal.NO_OBJECT, f"object unavailable: {error}") from None
        scope = self._scope()
        async for chunk in answer_pull(self._apps.objects, scope, request.object_id):
            yield chunk

    async def PrepareObjects(
        self, request: appio_pb2.PrepareObjectsRequest, context: _Context
    ) -> appio_pb2.PrepareObjectsResponse:
        try:
            await self._apps.ensure_objects(_run_id(), list(request.object_ids))
        except QuotaExceeded as error:
            raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None
        except (ValueError, FlwrmtlsError) as error:
            raise CallRefused(Refusal.NO_OBJECT, f"object unavailable: {error}") from None
        return appio_pb2.PrepareObjectsResponse()

    async def PushObject(
        self, request_iterator: AsyncIterator[objects_pb2.ObjectChunk], context: _Context
    ) -> objects_pb2.PushObjectResponse:
        scope = fixed_scope(self._scope())
        response, _ = await answer_push(self._apps.objects, request_iterator, scope)
        return response

    async def MissingObjects(
        self, request: objects_pb2.MissingObjectsRequest, context: _Context
    ) -> objects_pb2.MissingObjectsResponse:
        return await answer_missing(self._apps.objects, self._scope(), request.object_ids)
