"""The node's objects on disk: how much they may take, and when they go.

Rules:

* Everything the node receives into its store is bounded before its first byte is written:
  an object pulled from the link (Fleet PullObject) and one a ClientApp pushes over
  ClientAppIo reserve their declared size (:meth:`NodeStorage.reserve`), which is refused
  with :class:`~flwrmtls.objects.scope.QuotaExceeded` ("... would exceed
  --max-object-storage ...") when the store would hold more than its bound; the writer then
  refuses any byte past the declared size. A refusal fails that message's work (the ServerApp
  gets an error reply), never the node.
* What counts: the bytes of every object in the directory, measured when a reservation is
  asked for (so the reply arrays ClientApps write straight into a shared directory count
  too), plus the declared sizes of the receives in progress. ClientApps writing into a
  shared directory are not refused: they run as the node's OS user and could fill its disk
  without any API (``--no-shared-objects`` routes their bytes through ClientAppIo, bounded).
* When a run ends its objects are deleted, except those another run still holds and those
  a receive is writing (:meth:`NodeStorage.release`). The check and the deletion happen
  under one lock, and a receive adds its object to its run before it gives up its room, so
  an object is never deleted between a reservation and its run holding it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from flwrmtls.objects.scope import QuotaExceeded, Reservation
from flwrmtls.objects.store import ObjectStore
from flwrmtls.sizes import format_size

__all__ = ["DEFAULT_MAX_OBJECT_STORAGE", "NodeStorage", "RunScope"]

DEFAULT_MAX_OBJECT_STORAGE = 8 << 30
"""Bytes of objects a node keeps at once (``--max-object-storage``): at least the largest
object (``MAX_OBJECT_BYTES``, 8 GiB), so that any one object the link may send fits."""


class _Arrival:
    """The room one receive holds until its bytes are in place (or it failed)."""

    def __init__(self, storage: NodeStorage, object_id: str, size: int) -> None:
        self._storage = storage
        self._object_id = object_id
        self._size = size
        self._open = True

    def commit(self) -> None:
        self._end()

    def cancel(self) -> None:
        self._end()

    def _end(self) -> None:
        if self._open:
            self._open = False
            self._storage._arrived(self._object_id, self._size)


class NodeStorage:
    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._arriving: Counter[str] = Counter()
        """Object id -> receives writing it now."""
        self._arriving_bytes = 0

    def reserve(self, object_id: str, size: int) -> Reservation:
        """Room for a receive of ``size`` bytes, or QuotaExceeded naming the flag."""
        with self._lock:
            stored = self.store.stored_bytes()
            if stored + self._arriving_bytes + size > self.max_bytes:
                raise QuotaExceeded(
                    f"object {object_id[:16]} of {size} bytes would exceed "
                    f"--max-object-storage of {format_size(self.max_bytes)} on this node "
                    f"({stored} bytes stored, {self._arriving_bytes} arriving): raise the "
                    "flag, or run fewer or smaller runs on this node at once"
                )
            self._arriving[object_id] += 1
            self._arriving_bytes += size
        return _Arrival(self, object_id, size)

    def _arrived(self, object_id: str, size: int) -> None:
        with self._lock:
            self._arriving[object_id] -= 1
            if self._arriving[object_id] <= 0:
                del self._arriving[object_id]
            self._arriving_bytes -= size

    def release(self, object_ids: Iterable[str], *, held: Callable[[], Collection[str]]) -> int:
        """Delete those of ``object_ids`` that ``held()`` (the objects of the runs still
        active, asked under the lock) does not name and that no receive is writing; returns
        how many were deleted. A receive adds its object to its run before it ends."""
        with self._lock:
            keep = held()
            doomed = [
                object_id
                for object_id in dict.fromkeys(object_ids)
                if object_id not in keep and object_id not in self._arriving
            ]
            present = [object_id for object_id in doomed if self.store.has(object_id)]
            self.store.delete(present)
        return len(present)


class _JoinRun:
    """A ClientApp's push: on commit its object joins the run, then the room is given up."""

    def __init__(self, readable: set[str], object_id: str, arrival: Reservation) -> None:
        self._readable = readable
        self._object_id = object_id
        self._arrival = arrival

    def commit(self) -> None:
        self._readable.add(self._object_id)  # first: never unheld and not arriving at once
        self._arrival.commit()

    def cancel(self) -> None:
        self._arrival.cancel()


class RunScope:
    """What one run's ClientApp may read (``readable``, which grows with what it pushes) and
    the node's bound on what it may push (:class:`NodeStorage`)."""

    def __init__(self, readable: set[str], storage: NodeStorage) -> None:
        self._readable = readable
        self._storage = storage

    def readable(self, object_ids: Collection[str]) -> set[str]:
        return {object_id for object_id in object_ids if object_id in self._readable}

    def reserve(self, object_id: str, size: int) -> Reservation:
        return _JoinRun(self._readable, object_id, self._storage.reserve(object_id, size))
