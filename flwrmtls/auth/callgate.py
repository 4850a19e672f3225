"""Each authorized call's handler, wrapped: the gate between grpc and a servicer.

:class:`~flwrmtls.auth.interceptor.AuthInterceptor` decides; :func:`wrap` applies its decisions
to one method's handler, whatever its shape (unary or streaming either way):

* The call is authorized before the handler runs (``Gate.authorize``); while it runs, its
  principal is current (:mod:`flwrmtls.auth.caller`) and, with a registry of open calls
  (:mod:`flwrmtls.auth.livecalls`), the call is in it (``Gate.watch``); when it ends,
  ``Gate.on_end`` hears how (the audit trail's calls) and its place in the calls per address
  is freed.
* A call the registry ends (its credentials stopped being admitted) gets the refusal exactly
  as a refused unary call does (``Gate.refuse``). The handler's task is cancelled while it
  waits inside the handler; while grpc is sending a streamed response the refusal is
  answered as soon as the send completes (a caller that stops reading a stream holds that
  send until it reads again).
* With ``digest_bodies`` (EC-key signatures), a unary request is deserialized together with
  the SHA-256 of its bytes, and a signed client-streaming call (an EC-key node's object
  upload) is authorized with the digest of its ``flwrmtls-object`` declaration; every chunk
  of the stream must name that object and size, or the call is refused (``bad-signature``)
  before the chunk is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from flwrmtls.auth.audit import call_changed
from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.caller import handling_as, reset
from flwrmtls.auth.callsigning import (
    OBJECT_METADATA_KEY,
    declared_object_digest,
    parse_object_declaration,
)
from flwrmtls.auth.livecalls import LiveCall, LiveCalls

__all__ = ["Admitted", "Authorize", "Gate", "OnEnd", "Refuse", "Release", "Watching", "wrap"]

_Context = Any  # grpc.aio.ServicerContext; grpc's stubs type only the sync one

Release = Callable[[], None] | None
"""Called once when an authorized call ends (frees its place in the calls per address)."""
Admitted = tuple[Principal, Release, CallCredentials]
"""An authorized call: who, how to free its place in the calls per address, what it presented."""
Authorize = Callable[[_Context, bytes], Awaitable[Admitted]]
OnEnd = Callable[[Principal, _Context, str, BaseException | None], None]
"""``on_end(principal, context, peer, error)``. When a streaming handler's generator is closed
after its caller went away (``GeneratorExit``, ``CancelledError``) the call is already
finished: ``context`` must then not be touched (grpc.aio segfaults on ``context.peer()`` of a
finished call), which is why the peer is taken when the call starts."""
Refuse = Callable[[_Context, CallCredentials, Principal, AuthenticationFailed], Awaitable[None]]
Watch = Callable[[CallCredentials, Principal], "Watching"]


class _Ending:
    """How the registry ends one open call: remember the refusal, and cancel the handler's
    task if it is waiting inside the handler. While grpc is sending a streamed response
    (``in_handler`` False) cancelling would leave the call without a status, so the wrapper
    answers the refusal when the send completes instead."""

    __slots__ = ("_task", "in_handler", "refusal")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.refusal: AuthenticationFailed | None = None
        self.in_handler = True
        self._task = task

    def end(self, refusal: AuthenticationFailed) -> None:
        if self.refusal is not None:
            return
        self.refusal = refusal
        if self.in_handler and self._task is not None:
            self._task.cancel()


class Watching:
    """While a handler runs, its call is in the registry (if the listener keeps one); the
    ``_Ending`` (None without a registry) says whether the registry ended it."""

    __slots__ = ("_ending", "_entry", "_live")

    def __init__(
        self,
        live: LiveCalls | None,
        call: CallCredentials,
        principal: Principal,
        authenticator: Callable[[], Authenticator],
    ) -> None:
        self._live = live
        self._ending: _Ending | None = None
        self._entry: LiveCall | None = None
        if live is not None:
            self._ending = _Ending(asyncio.current_task())
            self._entry = LiveCall(call, principal, authenticator, self._ending.end)

    def __enter__(self) -> _Ending | None:
        if self._live is not None and self._entry is not None:
            self._live.add(self._entry)
        return self._ending

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None and self._entry is not None:
            self._live.discard(self._entry)


def _refusal(ending: _Ending | None) -> AuthenticationFailed | None:
    return None if ending is None else ending.refusal


@dataclass(frozen=True, slots=True)
class Gate:
    """What the wrapped handlers ask of the interceptor."""

    authorize: Authorize
    watch: Watch
    refuse: Refuse
    on_end: OnEnd | None


class _Handling:
    """While a handler runs its principal is current; when it ends, ``on_end`` hears how."""

    __slots__ = ("_changed", "_context", "_on_end", "_peer", "_principal", "_release", "_token")

    def __init__(
        self, principal: Principal, release: Release, context: _Context, on_end: OnEnd | None
    ) -> None:
        self._principal = principal
        self._release = release
        self._context = context
        self._on_end = on_end
        self._peer = context.peer() if on_end is not None else ""

    def __enter__(self) -> None:
        self._token = handling_as(self._principal)
        self._changed = call_changed()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        reset(self._token)
        if self._release is not None:
            self._release()
        if self._on_end is not None:
            self._on_end(self._principal, self._context, self._peer, error)
        with contextlib.suppress(ValueError):
            self._changed.var.reset(self._changed)


def _digesting(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A request deserializer that also returns the SHA-256 of the bytes received."""

    def deserialize(raw: bytes) -> tuple[Any, bytes]:
        message = deserializer(raw) if deserializer is not None else raw
        return message, hashlib.sha256(raw).digest()

    return deserialize


def _declared_object(context: _Context) -> tuple[bytes, tuple[str, int] | None]:
    """The digest a signed upload signs (of its ``flwrmtls-object`` declaration) and the
    declared (object id, size); (b"", None) without one, which the authenticator refuses."""
    found = [
        value for key, value in context.invocation_metadata() or () if key == OBJECT_METADATA_KEY
    ]
    if len(found) != 1 or not isinstance(found[0], str):
        return b"", None
    try:
        return declared_object_digest(found[0]), parse_object_declaration(found[0])
    except ValueError:
        return b"", None


async def _held_to(
    declared: tuple[str, int],
    requests: AsyncIterator[Any],
    refuse: Callable[[AuthenticationFailed], Awaitable[None]],
) -> AsyncIterator[Any]:
    """The chunks of a signed upload, each checked against the object the signature covers."""
    object_id, size = declared
    async for chunk in requests:
        if chunk.object_id != object_id or chunk.total_size != size:
            await refuse(
                AuthenticationFailed(
                    RefusalReason.BAD_SIGNATURE,
                    f"the upload's chunks name object {chunk.object_id[:16]}... of "
                    f"{chunk.total_size} bytes, but its signature covers "
                    f"{object_id[:16]}... of {size} bytes",
                )
            )
        yield chunk


async def _answered(
    responses: AsyncIterator[Any], ending: _Ending | None
) -> AsyncIterator[Any | AuthenticationFailed]:
    """A handler's streamed responses, then the refusal if the registry ended the call."""
    async with contextlib.aclosing(responses) as opened:  # type: ignore[type-var]
        while True:
            try:
                response = await anext(opened)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                refusal = _refusal(ending)
                if refusal is None:
                    raise
                yield refusal
                return
            if (refusal := _refusal(ending)) is not None:
                yield refusal
                return
            if ending is not None:
                ending.in_handler = False
            yield response
            if ending is not None:
                ending.in_handler = True
            if (refusal := _refusal(ending)) is not None:
                yield refusal
                return


def wrap(handler: Any, gate: Gate, *, digest_bodies: bool) -> Any:
    """The same handler, authorizing first. (grpc's stubs type only sync handlers.)

    With ``digest_bodies``, unary requests are deserialized together with the digest of their
    bytes, and client-streaming requests are authorized with the digest of their declared
    object and held to it. ``gate.on_end`` hears how each authorized call ended (not
    refusals: the interceptor records those itself).
    """
    request_deserializer = handler.request_deserializer
    if digest_bodies and (handler.unary_unary or handler.unary_stream):
        request_deserializer = _digesting(handler.request_deserializer)

    def split(request: Any) -> tuple[Any, bytes]:
        if digest_bodies:
            message, digest = request
            return message, digest
        return request, b""

    async def streamed(
        responses: AsyncIterator[Any], admitted: Admitted, context: Any
    ) -> AsyncIterator[Any]:
        principal, release, call = admitted
        with (
            _Handling(principal, release, context, gate.on_end),
            gate.watch(call, principal) as ending,
        ):
            async for item in _answered(responses, ending):
                if isinstance(item, AuthenticationFailed):
                    await gate.refuse(context, call, principal, item)
                    return
                yield item

    async def unary(run: Callable[[], Awaitable[Any]], admitted: Admitted, context: Any) -> Any:
        principal, release, call = admitted
        with (
            _Handling(principal, release, context, gate.on_end),
            gate.watch(call, principal) as ending,
        ):
            try:
                return await run()
            except asyncio.CancelledError:
                refusal = _refusal(ending)
                if refusal is None:
                    raise
            await gate.refuse(context, call, principal, refusal)

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: _Context) -> Any:
            message, digest = split(request)
            admitted = await gate.authorize(context, digest)
            return await unary(lambda: inner_uu(message, context), admitted, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            message, digest = split(request)
            admitted = await gate.authorize(context, digest)
            async for response in streamed(inner_us(message, context), admitted, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer, handler.response_serializer
        )

    async def declared_requests(requests: Any, context: _Context) -> tuple[Any, Admitted]:
        if not digest_bodies:
            return requests, await gate.authorize(context, b"")
        digest, declared = _declared_object(context)
        admitted = await gate.authorize(context, digest)
        principal, _, call = admitted
        if declared is not None and call.key_signature is not None:
            requests = _held_to(
                declared,
                requests,
                lambda refusal: gate.refuse(context, call, principal, refusal),
            )
        return requests, admitted

    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: _Context) -> Any:
            held, admitted = await declared_requests(requests, context)
            return await unary(lambda: inner_su(held, context), admitted, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: _Context) -> AsyncIterator[Any]:
        held, admitted = await declared_requests(requests, context)
        async for response in streamed(inner_ss(held, context), admitted, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
