"""Serving objects in chunks over gRPC (grpc.aio servicers), the same way on every API that
carries them.

:func:`answer_pull`, :func:`answer_push` and :func:`answer_missing` answer the three object
endpoints relative to the caller's scope (:mod:`flwrmtls.objects.scope`: what it may read,
what it may store), so that a caller learns nothing about objects outside it;
:func:`receive_object` stores a pushed object after verifying its hash; :func:`serve_object`
streams a stored one. No message ever carries more than one chunk. The other side (blocking
stubs) is :mod:`flwrmtls.objects.transfer`.

Every receive is bounded before its first byte is written: the announced size is at most
:data:`~flwrmtls.objects.transfer.MAX_OBJECT_BYTES`, the receiver reserves room for it (a
run's or node's quota on the link, ``--max-object-storage`` on a node), and no byte past the
announced size is accepted.

A server may pass a :class:`TransferGate`: then at most its ``limit`` transfers move bytes at
once, and the others wait their turn before their first chunk, so what the server buffers for
transfers (grpc's stream buffers, chunks on their way) is bounded by the gate, not by the
number of callers. A waiting upload is not read, so its sender stops at the stream's flow
control window. When no turn has ended for the gate's ``patience`` seconds (every turn is
held by a caller that stalls: a slow or hostile reader), a waiting transfer goes ahead
without one: stalled callers cost memory, as they did without a gate, but never stop the
others' transfers. While turns keep ending, waiting is only queueing.

A gate may also be given ``release``: what gives the process's freed heap back to the system
(:func:`flwrmtls.heap.release_free_memory`), called on the event loop once a transfer has
ended (from the next turn of the loop, when the transfer's buffers are let go), then at most
once every ``release_interval`` seconds while more end, the last end always followed by
one. glibc keeps what a transfer's chunks and buffers freed and serves later transfers
around it: the link alone at 8 and 32 nodes x 50 MiB peaked at 160-162 and 211-213 MiB
without it, 154-160 and 196-202 with it (docs/performance.md; it lowers the level, not the
growth with the nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import BinaryIO

from flwrmtls.objects.scope import ObjectScope, QuotaExceeded, Reservation
from flwrmtls.objects.store import CHUNK_SIZE, ObjectStore, check_object_id
from flwrmtls.objects.transfer import MAX_OBJECT_BYTES
from flwrmtls.proto import objects_pb2
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = [
    "CHUNKS_PER_READ",
    "TRANSFERS_AT_ONCE",
    "TURN_PATIENCE",
    "ScopeOf",
    "TransferGate",
    "answer_missing",
    "answer_pull",
    "answer_push",
    "fixed_scope",
    "receive_object",
    "serve_object",
]

log = logging.getLogger("flwrmtls.objects")

TRANSFERS_AT_ONCE = 8
"""Transfers a link moves bytes for at once (its :class:`TransferGate`): enough to keep two
cores busy with TLS and hashing, few enough that 32 nodes' transfers buffer what 2 do (4 a
node; 16 before: at 32 nodes x 50 MiB the link's tree 414-435 MiB against 381-382, the
round alike; docs/performance.md)."""
CHUNKS_PER_READ = 4
"""Chunks a sender reads from its store per worker-thread call: what it holds per transfer."""
TURN_PATIENCE = 5.0
"""Seconds without any turn ending after which a waiting transfer goes ahead without one."""
RELEASE_INTERVAL = 1.0
"""Seconds between two returns of freed heap to the system while transfers keep ending
(each costs the pages' faults again when they are next used)."""


class TransferGate:
    """At most ``limit`` object transfers move bytes at once (event loop only)."""

    def __init__(
        self,
        limit: int = TRANSFERS_AT_ONCE,
        patience: float = TURN_PATIENCE,
        *,
        release: Callable[[], object] | None = None,
        release_interval: float = RELEASE_INTERVAL,
    ) -> None:
        self.limit = limit
        self.patience = patience
        self.release_interval = release_interval
        self._release = release
        self._release_due: asyncio.TimerHandle | None = None
        self._last_release = float("-inf")
        self.releases = 0
        """Times the freed heap was given back, since the start."""
        self._semaphore = asyncio.Semaphore(limit)
        self.waiting = 0
        """Transfers waiting for their turn now."""
        self.impatient = 0
        """Transfers that went ahead without a turn, since the start."""
        self._last_end = float("-inf")
        """When (the event loop's clock) a turn last ended."""

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a turn (unless no turn ends for ``patience`` seconds); it ends with the
        block."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        granted = False
        try:
            while not granted:
                try:
                    await asyncio.wait_for(self._semaphore.acquire(), self.patience)
                    granted = True
                except TimeoutError:
                    if loop.time() - self._last_end >= self.patience:
                        self.impatient += 1  # every turn is stalled: go ahead
                        break
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            if granted:
                self._last_end = loop.time()
                self._semaphore.release()
            self._transfer_ended(loop)

    def _transfer_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the freed heap back from the loop's next turn, or once ``release_interval``
        has passed since the last time; one release waits at a time, and it comes after
        every end that found none waiting."""
        if self._release is None or self._release_due is not None:
            return
        delay = max(0.0, self._last_release + self.release_interval - loop.time())
        self._release_due = loop.call_later(delay, self._release_heap, loop)

    def _release_heap(self, loop: asyncio.AbstractEventLoop) -> None:
        self._release_due = None
        self._last_release = loop.time()
        self.releases += 1
        assert self._release is not None
        try:
            self._release()
        except Exception as error:  # never the transfers' concern: the heap stays as it is
            log.warning("giving freed memory back to the system failed: %s", error)


def _turn(gate: TransferGate | None) -> contextlib.AbstractAsyncContextManager[None]:
    return gate.turn() if gate is not None else contextlib.nullcontext()


async def serve_object(
    store: ObjectStore, object_id: str, gate: TransferGate | None = None
) -> AsyncIterator[objects_pb2.ObjectChunk]:
    """Stream a stored object, in its turn.

    A chunk the page cache holds (an object is usually sent soon after it was written) is read
    on the event loop, which never waits for the disk (:meth:`ObjectStore.read_cached`:
    ``RWF_NOWAIT``); otherwise :data:`CHUNKS_PER_READ` chunks are read in a worker thread, so
    that a slow or hung disk, or a network file system, never stops the link's other calls.
    A worker thread per 1 MiB chunk cost a third of a link's send throughput (4 nodes pulling
    256 MiB each: about 440 MB/s against 580-680 MB/s with no thread hop, on the 2-core bench
    machine), and one per 4 chunks nearly as much in a whole round.

    An app process shares its host's store, so the file may change while it is sent: it is
    read, never mapped (a mapped file cut short kills the reader with SIGBUS), never past the
    size it had when opened, and a file cut short ends the stream short, which the receiver
    refuses as incomplete. A file deleted after it was opened (its run cleared) is still sent
    whole; one missing at the open (or not a regular file) is ``no-object``.
    """
    async with _turn(gate):
        try:
            file, total = await _opened(store, object_id)
        except FileNotFoundError:
            raise CallRefused(Refusal.NO_OBJECT, f"no object {object_id[:80]}") from None
        with file:
            if total == 0:
                yield objects_pb2.ObjectChunk(object_id=object_id, total_size=0, offset=0)
                return
            buffer = bytearray(min(CHUNK_SIZE, total))
            offset = 0
            while offset < total:
                if len(buffer) > total - offset:
                    buffer = bytearray(total - offset)
                cached = store.read_cached(file, offset, buffer)
                batch = (
                    [cached]
                    if cached is not None
                    else await asyncio.to_thread(
                        store.read_chunks, file, offset, total, CHUNKS_PER_READ
                    )
                )
                if not batch:
                    return  # cut short since it was opened: the receiver finds it incomplete
                for data in batch:
                    yield objects_pb2.ObjectChunk(
                        object_id=object_id, total_size=total, offset=offset, data=data
                    )
                    offset += len(data)


async def _opened(store: ObjectStore, object_id: str) -> tuple[BinaryIO, int]:
    """:meth:`ObjectStore.open_for_streaming` in a worker thread. A transfer cancelled while
    the thread opens the file (its caller went away) cannot stop the thread: the file it
    opens is closed as soon as it is open, not left to the garbage collector."""
    opening = asyncio.ensure_future(asyncio.to_thread(store.open_for_streaming, object_id))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[tuple[BinaryIO, int]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].close()


ScopeOf = Callable[[objects_pb2.ObjectChunk], Awaitable[ObjectScope]]
"""Sees a push's first chunk before anything is written, may abort the call (an unknown
session), and returns the caller's scope."""


def fixed_scope(scope: ObjectScope) -> ScopeOf:
    """A :data:`ScopeOf` for a caller known before its first chunk (an app process's run)."""

    async def scope_of(_: objects_pb2.ObjectChunk) -> ObjectScope:
        return scope

    return scope_of


async def receive_object(
    store: ObjectStore,
    chunks: AsyncIterator[objects_pb2.ObjectChunk],
    scope_of: ScopeOf,
    gate: TransferGate | None = None,
) -> tuple[objects_pb2.PushObjectResponse, str]:
    """Store a pushed object for the caller; returns the response and the first chunk's
    session id.

    Raises ValueError (bad id, wrong size, hash mismatch; the object then does not join the
    scope) or QuotaExceeded (before any byte is written). An object the caller may already
    read, and that is stored, is answered without reading the push; any other push is read
    and hashed in full, even when the same bytes are stored for someone else, so that a push
    never tells its caller what the store holds beyond its scope. Nothing is read before the
    push's turn (``gate``).
    """
    async with _turn(gate):
        return await _receive_object(store, chunks, scope_of)


async def _receive_object(
    store: ObjectStore,
    chunks: AsyncIterator[objects_pb2.ObjectChunk],
    scope_of: ScopeOf,
) -> tuple[objects_pb2.PushObjectResponse, str]:
    writer = None
    reservation: Reservation | None = None
    session_id = ""
    try:
        async for chunk in chunks:
            if writer is None:
                session_id = chunk.session_id
                scope = await scope_of(chunk)  # may abort: nothing is written before it passes
                check_object_id(chunk.object_id)
                if chunk.total_size > MAX_OBJECT_BYTES:
                    raise ValueError(
                        f"object {chunk.object_id[:16]}: {chunk.total_size} bytes is over the "
                        f"limit of {MAX_OBJECT_BYTES}"
                    )
                if scope.readable([chunk.object_id]) and store.has(chunk.object_id):
                    return objects_pb2.PushObjectResponse(
                        object_id=chunk.object_id, size=store.size(chunk.object_id)
                    ), session_id
                reservation = scope.reserve(chunk.object_id, chunk.total_size)
                writer = store.writer(chunk.object_id, chunk.total_size)
            # writing and hashing release the GIL: off the event loop, other calls go on
            await asyncio.to_thread(writer.write, chunk.offset, chunk.data)
        if writer is None:
            raise ValueError("no chunks pushed")
        await asyncio.to_thread(writer.finish)
    except BaseException:
        if writer is not None:
            writer.abort()
        if reservation is not None:
            reservation.cancel()
        raise
    assert reservation is not None
    reservation.commit()
    return objects_pb2.PushObjectResponse(
        object_id=writer.object_id, size=writer.total_size
    ), session_id


# --- the three object endpoints, as every servicer that carries objects answers them -------


def _visible(store: ObjectStore, scope: ObjectScope, object_ids: Sequence[str]) -> set[str]:
    """Those of ``object_ids`` the caller may read and the store holds (ids checked first:
    ValueError for a malformed one)."""
    unique = [check_object_id(object_id) for object_id in dict.fromkeys(object_ids)]
    return {object_id for object_id in scope.readable(unique) if store.has(object_id)}


async def answer_pull(
    store: ObjectStore, scope: ObjectScope, object_id: str, gate: TransferGate | None = None
) -> AsyncIterator[objects_pb2.ObjectChunk]:
    """PullObject: stream an object the caller may read, or refuse it as ``no-object`` (the
    same answer for an object that is not stored and for one outside the caller's scope)."""
    try:
        present = bool(_visible(store, scope, [object_id]))
    except ValueError:
        present = False
    if not present:
        raise CallRefused(Refusal.NO_OBJECT, f"no object {object_id[:80]}")
    async for chunk in serve_object(store, object_id, gate):
        yield chunk


async def answer_push(
    store: ObjectStore,
    chunks: AsyncIterator[objects_pb2.ObjectChunk],
    scope_of: ScopeOf,
    gate: TransferGate | None = None,
) -> tuple[objects_pb2.PushObjectResponse, str]:
    """PushObject: store a verified object for the caller; refused as ``invalid-request`` for
    bad bytes, ``over-quota`` over a quota; also the first session id."""
    try:
        return await receive_object(store, chunks, scope_of, gate)
    except ValueError as error:
        raise CallRefused(Refusal.INVALID_REQUEST, str(error)) from None
    except QuotaExceeded as error:
        raise CallRefused(Refusal.OVER_QUOTA, str(error)) from None


async def answer_missing(
    store: ObjectStore, scope: ObjectScope, object_ids: Sequence[str]
) -> objects_pb2.MissingObjectsResponse:
    """MissingObjects: which of ``object_ids`` the caller cannot read from the store (an
    object outside its scope is missing to it, stored or not), or ``invalid-request``."""
    try:
        visible = _visible(store, scope, object_ids)
    except ValueError as error:
        raise CallRefused(Refusal.INVALID_REQUEST, str(error)) from None
    missing = [object_id for object_id in dict.fromkeys(object_ids) if object_id not in visible]
    return objects_pb2.MissingObjectsResponse(object_ids=missing)
