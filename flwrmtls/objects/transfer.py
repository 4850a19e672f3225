"""Moving objects in chunks over gRPC from the calling side (blocking stubs), the same way on
every API that carries them.

:func:`push_objects` sends only what the other side lacks, :func:`pull_objects` and
:func:`pull_object_into` fetch by id, :func:`in_parallel` moves a message's objects on several
streams at once, and :func:`store_shared` writes an app process's own objects into the store
its link or node shares with it, several at once. No message ever carries more than one
chunk. The serving side (grpc.aio servicers) is :mod:`flwrmtls.objects.serving`.

Every upload declares its object (``flwrmtls-object`` metadata: content hash and size), so an
EC-key node signs what identifies the bytes, and the link holds the stream to it. Every
receive is bounded before its first byte is written: the announced size is at most
:data:`MAX_OBJECT_BYTES`, and no byte past it is accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import (
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from flwrmtls.objects.scope import Reservation
from flwrmtls.objects.store import CHUNK_SIZE, ObjectStore, check_object_id
from flwrmtls.proto import objects_pb2
from flwrmtls.wire.metadata import OBJECT_KEY, object_declaration

__all__ = [
    "MAX_OBJECT_BYTES",
    "PARALLEL_STREAMS",
    "Reserve",
    "in_parallel",
    "pull_object_bytes",
    "pull_object_into",
    "pull_objects",
    "push_objects",
    "push_stored_objects",
    "store_shared",
]

Metadata = Sequence[tuple[str, str]]

MAX_OBJECT_BYTES = 8 << 30
"""The largest object (one array's bytes, or an app bundle) a receiver accepts."""

PARALLEL_STREAMS = 4
"""Objects moved at once by one sender or receiver (each on its own stream of one channel), or
written at once into a shared store (:func:`store_shared`)."""

_T = TypeVar("_T")
_R = TypeVar("_R")


def in_parallel(function: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``function`` over ``items``, up to PARALLEL_STREAMS at a time; results in order.

    A message's arrays move concurrently, so one object's transfer overlaps the next one's
    (and, through a node, its fetch from the link), and an app process's writes into a shared
    store use several cores. The first error is raised once all started calls have ended.
    """
    work = list(items)
    if len(work) <= 1:
        return [function(item) for item in work]
    with ThreadPoolExecutor(min(PARALLEL_STREAMS, len(work)), "transfer") as pool:
        return list(pool.map(function, work))


def store_shared(store: ObjectStore, objects: Mapping[str, bytes | memoryview]) -> None:
    """Write objects this process named from their very bytes (object id -> bytes) into a
    shared store, several at a time (a write lets go of the GIL while it copies)."""
    in_parallel(lambda item: store.put_hashed(item[1], item[0]), objects.items())


def _chunks(
    object_id: str, data: bytes | memoryview, session_id: str
) -> Iterator[objects_pb2.ObjectChunk]:
    view = memoryview(data).cast("B")
    total = len(view)
    offset = 0
    while True:
        piece = view[offset : offset + CHUNK_SIZE]
        yield objects_pb2.ObjectChunk(
            object_id=object_id, total_size=total, offset=offset, data=bytes(piece),
            session_id=session_id,
        )  # fmt: skip
        offset += len(piece)
        if offset >= total:
            return


def push_objects(
    stub: Any,
    objects: Mapping[str, bytes | memoryview],
    *,
    metadata: Metadata = (),
    session_id: str = "",
    timeout: float | None = None,
) -> int:
    """Push the objects the receiver lacks; returns how many were sent."""
    return _push_missing(
        stub, list(objects), lambda object_id: _chunks(object_id, objects[object_id], session_id),
        lambda object_id: memoryview(objects[object_id]).nbytes,
        metadata=metadata, session_id=session_id, timeout=timeout,
    )  # fmt: skip


def push_stored_objects(
    stub: Any,
    store: ObjectStore,
    object_ids: Sequence[str],
    *,
    metadata: Metadata = (),
    session_id: str = "",
    timeout: float | None = None,
) -> int:
    """Push, straight from ``store``, the objects the receiver lacks; returns how many."""

    def chunks(object_id: str) -> Iterator[objects_pb2.ObjectChunk]:
        for offset, total, data in store.chunks(object_id):
            yield objects_pb2.ObjectChunk(
                object_id=object_id, total_size=total, offset=offset, data=data,
                session_id=session_id,
            )  # fmt: skip

    return _push_missing(
        stub, list(object_ids), chunks, store.size,
        metadata=metadata, session_id=session_id, timeout=timeout,
    )  # fmt: skip


def _push_missing(
    stub: Any,
    object_ids: list[str],
    chunks_of: Callable[[str], Iterator[objects_pb2.ObjectChunk]],
    size_of: Callable[[str], int],
    *,
    metadata: Metadata,
    session_id: str,
    timeout: float | None,
) -> int:
    """Ask which of ``object_ids`` the receiver lacks and push those, several at a time, each
    declaring its object (``flwrmtls-object``)."""
    if not object_ids:
        return 0
    response = stub.MissingObjects(
        objects_pb2.MissingObjectsRequest(object_ids=object_ids, session_id=session_id),
        metadata=metadata, timeout=timeout,
    )  # fmt: skip

    def push(object_id: str) -> Any:
        declared = (OBJECT_KEY, object_declaration(object_id, size_of(object_id)))
        return stub.PushObject(
            chunks_of(object_id), metadata=(*metadata, declared), timeout=timeout
        )

    in_parallel(push, response.object_ids)
    return len(response.object_ids)


def pull_object_bytes(
    stub: Any,
    object_id: str,
    *,
    metadata: Metadata = (),
    session_id: str = "",
    timeout: float | None = None,
) -> memoryview:
    """Fetch one object into memory, verify it, and return a read-only view of its bytes.

    The buffer is allocated once, at the size the first chunk announces (capped at
    MAX_OBJECT_BYTES), and hashed as the chunks arrive: no copy after the last chunk.
    """
    buffer: bytearray | None = None
    digest = hashlib.sha256()
    received = 0
    for chunk in stub.PullObject(
        objects_pb2.PullObjectRequest(object_id=object_id, session_id=session_id),
        metadata=metadata,
        timeout=timeout,
    ):
        if buffer is None:
            if not 0 <= chunk.total_size <= MAX_OBJECT_BYTES:
                raise ValueError(f"object {object_id}: announced size {chunk.total_size}")
            buffer = bytearray(chunk.total_size)
        end = received + len(chunk.data)
        if chunk.offset != received:
            raise ValueError(f"object {object_id}: chunk at {chunk.offset}, expected {received}")
        if end > len(buffer):
            raise ValueError(f"object {object_id}: more bytes than the {len(buffer)} announced")
        buffer[received:end] = chunk.data
        digest.update(chunk.data)
        received = end
    if buffer is None or received != len(buffer):
        raise ValueError(f"object {object_id}: incomplete ({received} bytes)")
    if digest.hexdigest() != object_id:
        raise ValueError(f"object {object_id}: bytes do not match their SHA-256")
    return memoryview(buffer).toreadonly()


def pull_objects(
    stub: Any,
    object_ids: Sequence[str],
    *,
    metadata: Metadata = (),
    session_id: str = "",
    timeout: float | None = None,
) -> dict[str, memoryview]:
    unique = list(dict.fromkeys(object_ids))
    pulled = in_parallel(
        lambda object_id: pull_object_bytes(
            stub, object_id, metadata=metadata, session_id=session_id, timeout=timeout
        ),
        unique,
    )
    return dict(zip(unique, pulled, strict=True))


Reserve = Callable[[str, int], Reservation]
"""Room for an object of a declared size before its first byte is written (may raise
:class:`~flwrmtls.objects.scope.QuotaExceeded`)."""


def pull_object_into(
    store: ObjectStore,
    stub_call: Callable[..., Any],
    object_id: str,
    *,
    metadata: Metadata = (),
    session_id: str = "",
    timeout: float | None = None,
    reserve: Reserve | None = None,
    verify: bool = True,
) -> None:
    """Fetch one object into ``store`` (verified on completion; with ``verify=False`` its size
    only, for a receiver whose readers hash it) unless it is there already.

    Bounded before a byte is written: the size the first chunk announces must be at most
    MAX_OBJECT_BYTES, and ``reserve`` (the receiver's storage bound) must make room for it;
    the writer then refuses any byte past the announced size. On any failure the call is
    cancelled, the partial file deleted and the reservation released.
    """
    check_object_id(object_id)
    if store.has(object_id):
        return
    writer = None
    reservation: Reservation | None = None
    stream = stub_call(
        objects_pb2.PullObjectRequest(object_id=object_id, session_id=session_id),
        metadata=metadata,
        timeout=timeout,
    )
    try:
        for chunk in stream:
            if writer is None:
                if not 0 <= chunk.total_size <= MAX_OBJECT_BYTES:
                    raise ValueError(
                        f"object {object_id[:16]}: announced size {chunk.total_size} is over "
                        f"the limit of {MAX_OBJECT_BYTES} bytes"
                    )
                if reserve is not None:
                    reservation = reserve(object_id, chunk.total_size)
                writer = store.writer(object_id, chunk.total_size, verify=verify)
            writer.write(chunk.offset, chunk.data)
        if writer is None:
            raise ValueError(f"object {object_id}: nothing received")
        writer.finish()
    except BaseException:
        cancel = getattr(stream, "cancel", None)
        if cancel is not None:
            cancel()  # the sender stops at once, not when the stream is collected
        if writer is not None:
            writer.abort()
        if reservation is not None:
            reservation.cancel()
        raise
    if reservation is not None:
        reservation.commit()
