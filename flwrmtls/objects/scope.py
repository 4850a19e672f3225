"""What one caller of an object API may read and store: its scope.

Rules:

* Every endpoint that carries objects (PullObject, PushObject, MissingObjects on Fleet,
  ServerAppIo and ClientAppIo) answers relative to its caller's scope, never relative to the
  whole store: whose scope is which is decided by the servicer (the link's
  :mod:`flwrmtls.runs.linkobjects`, the node's :mod:`flwrmtls.node.clientapps`).
* A caller never learns whether an object it may not read is stored: PullObject answers
  NOT_FOUND exactly as for a missing object, MissingObjects lists it as missing, and a push
  of it is read and hashed in full, exactly as a new object, before it joins the scope.
  Only an object the caller may already read is answered without reading the push.
* Storing is reserved before the first byte is written (:meth:`ObjectScope.reserve`, which
  may refuse with :class:`QuotaExceeded`), and the reservation is committed once the bytes
  are verified and in place, or cancelled if they are not.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

__all__ = ["ObjectScope", "QuotaExceeded", "Reservation", "SetScope"]


class QuotaExceeded(Exception):
    """Storing this would take a run or a node over its bound; the message says which flag."""


class Reservation(Protocol):
    def commit(self) -> None:
        """The object is stored and verified: it now counts as the caller's."""
        ...

    def cancel(self) -> None:
        """The upload failed: release what was reserved."""
        ...


class ObjectScope(Protocol):
    def readable(self, object_ids: Collection[str]) -> set[str]:
        """Those of ``object_ids`` the caller may read (whether or not they are stored)."""
        ...

    def reserve(self, object_id: str, size: int) -> Reservation:
        """Room for a verified upload of ``size`` bytes; raises :class:`QuotaExceeded`."""
        ...


class _AddOnCommit:
    def __init__(self, readable: set[str], object_id: str) -> None:
        self._readable = readable
        self._object_id = object_id

    def commit(self) -> None:
        self._readable.add(self._object_id)

    def cancel(self) -> None:
        pass


class SetScope:
    """A scope over a set of readable ids that grows with what the caller pushes; no quota.
    (A node's run scope adds its storage bound: :class:`flwrmtls.node.storage.RunScope`.)"""

    def __init__(self, readable: set[str]) -> None:
        self._readable = readable

    def readable(self, object_ids: Collection[str]) -> set[str]:
        return {object_id for object_id in object_ids if object_id in self._readable}

    def reserve(self, object_id: str, size: int) -> Reservation:
        return _AddOnCommit(self._readable, object_id)
