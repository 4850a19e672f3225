"""The link's objects: who may read which, what a run and a node may store, when they go.

Rules (the table is the policy; :class:`LinkObjects` applies it):

====================  ===============================  =======================  ====================
caller                may read                         its uploads count        they belong to
                                                       against
====================  ===============================  =======================  ====================
ServerApp of run R    the objects of run R             run R                    run R, at once
                                                       (``--max-run-storage``)
node N                objects named by messages        N's pending budget       the run of the
                      addressed to N, the bundles of   (``--max-node-pending-   reply that names
                      the runs that sent them, the     storage``)               them; unnamed ones
                      objects of N's own replies, N's                           expire after
                      pending uploads                                           ``PENDING_TTL``
====================  ===============================  =======================  ====================

* An object belongs to a run when it was pushed for the run (its bundle, its ServerApp's
  uploads) or is named by one of the run's messages (instructions, replies): the table
  ``run_objects`` (:mod:`flwrmtls.state.objecttable`). The same bytes in two runs are one
  file with two rows. A run's quota counts each of its objects once, whoever else holds it.
* Quotas count an object's size, but at least ``CHARGE_UNIT`` (a file takes a block, an
  inode and rows however small it is), so a bound in bytes also bounds the number of objects;
  a node's pending uploads are also at most ``max_node_pending_objects`` (rows).
* A node's pending uploads are rows (``pending_objects``), not this process's memory: with
  several link processes on one database, the reply that names an upload may reach another
  one. A run's stored bytes are cached per run on one link (SQLite), read from the database
  on each check with several (another process may have added some).
* A message may name only objects its sender may read, and that are stored: a ServerApp
  those of its run (with a shared object directory, any object in the directory: it can
  read them all anyway); a node those it may read or has pending. Any other is refused as
  "not pushed", whether or not the link stores it.
* A caller never learns whether an object outside its scope exists
  (:mod:`flwrmtls.objects.scope`): reads answer "no object", and a push is read and hashed in
  full before it joins the caller's scope.
* Reclaiming: when a run ends its rows go, and each of its objects that then belongs to no
  run, is pending for no node and is not being uploaded is deleted. A node's pending uploads
  expire ``PENDING_TTL`` seconds after they arrive (swept when the node uploads again and
  every ``SWEEP_INTERVAL`` seconds). At start-up every stored object that belongs to no run
  and is pending for no node is deleted (the runs active when the link stopped have failed by
  then), and so is every partial write a link that died left; with other link processes
  alive on the database, only those older than ``PENDING_TTL`` (the others may be writing
  theirs now).
* Files cannot be in a transaction, so they are ordered around it: a file is written before
  the rows that name it commit, and deleted only after the rows that held it are gone and
  committed. A crash in between leaves at worst a file that nothing names (the start-up sweep
  deletes it), never a row naming a missing file. Rows change in the caller's transaction
  when there is one (a run's end, a push of messages): they commit or vanish with it, and the
  link's caches of them (bytes per run, pending uploads) follow the commit.
* Every method runs on the link's event loop: no two of them interleave, so a check and the
  change it allows see the same state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flwrmtls.clock import Clock
from flwrmtls.heap import release_free_memory
from flwrmtls.objects.scope import ObjectScope, QuotaExceeded, Reservation
from flwrmtls.objects.serving import TransferGate
from flwrmtls.objects.store import ObjectStore, check_object_id
from flwrmtls.state.linkstate import LinkState

__all__ = [
    "CHARGE_UNIT",
    "DEFAULT_MAX_NODE_PENDING_STORAGE",
    "DEFAULT_MAX_RUN_STORAGE",
    "MAX_NODE_PENDING_OBJECTS",
    "PENDING_TTL",
    "SWEEP_INTERVAL",
    "LinkObjects",
    "StorageLimits",
    "UnknownObjects",
    "charge",
]

_K = TypeVar("_K")

DEFAULT_MAX_RUN_STORAGE = 32 << 30
"""Bytes of objects one run may hold on the link (``--max-run-storage``)."""
DEFAULT_MAX_NODE_PENDING_STORAGE = 4 << 30
"""Bytes one node may have uploaded that no reply names yet (``--max-node-pending-storage``)."""
PENDING_TTL = 600.0
"""Seconds a node's upload may wait for the reply that names it (a transfer's timeout)."""
SWEEP_INTERVAL = 10.0
"""Seconds between two sweeps of expired pending uploads."""
CHARGE_UNIT = 4096
"""The least bytes an object counts for against a quota, however small it is."""
MAX_NODE_PENDING_OBJECTS = 10_000
"""Uploads one node may have that no reply names yet (the link holds them in memory)."""


def charge(size: int) -> int:
    """What an object of ``size`` bytes counts for against a quota."""
    return max(size, CHARGE_UNIT)


@dataclass(frozen=True, slots=True)
class StorageLimits:
    max_run_bytes: int = DEFAULT_MAX_RUN_STORAGE
    max_node_pending_bytes: int = DEFAULT_MAX_NODE_PENDING_STORAGE
    max_node_pending_objects: int = MAX_NODE_PENDING_OBJECTS
    pending_ttl: float = PENDING_TTL


class UnknownObjects(Exception):
    """A message names objects its sender may not read, or that are not stored."""

    def __init__(self, object_ids: Sequence[str]) -> None:
        more = f" and {len(object_ids) - 3} more" if len(object_ids) > 3 else ""
        super().__init__(", ".join(object_id[:80] for object_id in object_ids[:3]) + more)
        self.object_ids = list(object_ids)


def _well_formed(object_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(unique well-formed ids, malformed ones)."""
    good: list[str] = []
    bad: list[str] = []
    for object_id in dict.fromkeys(object_ids):
        try:
            good.append(check_object_id(object_id))
        except ValueError:
            bad.append(object_id)
    return good, bad


class LinkObjects:
    def __init__(
        self, store: ObjectStore, state: LinkState, clock: Clock, limits: StorageLimits
    ) -> None:
        self.store = store
        self.limits = limits
        self.transfers = TransferGate(release=release_free_memory)
        """Object transfers the link moves bytes for at once, whoever asks (its memory), and
        the heap they freed given back as they end."""
        self._table = state.objects
        self._runs = state.runs
        self._transaction = state.transaction
        self._shared = state.shared
        self._clock = clock
        self._uploading: Counter[str] = Counter()
        """Object id -> uploads writing it now (they hold it against reclaiming)."""
        self._run_reserved: Counter[int] = Counter()
        """Run id -> bytes charged for its uploads in progress."""
        self._node_reserved: Counter[int] = Counter()
        """Node id -> bytes charged for its uploads in progress."""
        self._node_uploads: Counter[int] = Counter()
        """Node id -> its uploads in progress."""
        self._run_bytes: dict[int, int] = {}
        """Run id -> bytes of its objects (mirrors ``run_objects``; read once per run)."""

    # --- scopes: what the object endpoints answer relative to ------------------------------

    def run_scope(self, run_id: int) -> ObjectScope:
        """The scope of run ``run_id``'s ServerApp."""
        return _RunScope(self, run_id)

    def node_scope(self, node_id: int) -> ObjectScope:
        """The scope of node ``node_id`` on the Fleet API."""
        return _NodeScope(self, node_id)

    # --- messages name objects: checks, then associations ----------------------------------

    def add_bundle(self, run_id: int, bundle_hash: str) -> None:
        """StartRun: the run's bundle (already stored) is the run's first object."""
        cost = charge(self.store.size(bundle_hash))
        self._check_run_room(run_id, cost)
        self._add(run_id, {bundle_hash: cost}, ())

    def check_bundle(self, size: int) -> None:
        """StartRun, before the run exists: a bundle must fit in one run's quota."""
        if charge(size) > self.limits.max_run_bytes:
            raise QuotaExceeded(
                f"the app bundle is {size} bytes, over the link's --max-run-storage of "
                f"{self.limits.max_run_bytes} bytes for everything a run stores"
            )

    def accept_run_messages(
        self,
        run_id: int,
        messages: Sequence[tuple[int, Sequence[str]]],
        *,
        bundle_hash: str,
        shared: bool,
    ) -> None:
        """ServerAppIo PushMessages: ``messages`` are (destination node, object ids). Each
        object must be the run's (or, with ``shared``, be in the directory); they become
        the run's, and each destination may read its message's objects and the run's bundle.
        Raises UnknownObjects or QuotaExceeded, and then changes nothing."""
        named, malformed = _well_formed(i for _, ids in messages for i in ids)
        own = self._table.of_run(run_id, named)
        unknown = malformed + [
            object_id
            for object_id in named
            if (object_id not in own and not shared) or not self.store.has(object_id)
        ]
        if unknown:
            raise UnknownObjects(unknown)
        charges = {i: charge(self.store.size(i)) for i in named if i not in own}
        self._check_run_room(run_id, sum(charges.values()))
        grants = {
            (node_id, object_id)
            for node_id, object_ids in messages
            for object_id in (*object_ids, bundle_hash)
        }
        self._add(run_id, charges, grants)

    def accept_replies(self, node_id: int, replies: Sequence[tuple[int, Sequence[str]]]) -> None:
        """Fleet PushMessages: ``replies`` are (run, object ids). Each object must be one
        the node may read or has pending, and stored; they become the reply's run's (its
        quota), stay readable by the node, and leave its pending uploads. Raises
        UnknownObjects or QuotaExceeded, and then changes nothing."""
        named, malformed = _well_formed(i for _, ids in replies for i in ids)
        pending = self._table.pending_of(node_id, named)
        readable = self._table.of_node(node_id, named)
        unknown = malformed + [
            object_id
            for object_id in named
            if (object_id not in readable and object_id not in pending)
            or not self.store.has(object_id)
        ]
        if unknown:
            raise UnknownObjects(unknown)
        by_run: dict[int, set[str]] = {}
        for run_id, ids in replies:
            by_run.setdefault(run_id, set()).update(ids)
        additions: dict[int, dict[str, int]] = {}
        for run_id, run_ids in by_run.items():
            own = self._table.of_run(run_id, run_ids)
            additions[run_id] = {
                i: pending[i] if i in pending else charge(self.store.size(i))
                for i in run_ids
                if i not in own
            }
            self._check_run_room(run_id, sum(additions[run_id].values()))
        for run_id, run_ids in by_run.items():
            self._add(run_id, additions[run_id], {(node_id, i) for i in run_ids})
        self._table.release_pending(node_id, list(pending))  # in the caller's transaction

    # --- reclaiming ------------------------------------------------------------------------

    def release_run(self, run_id: int) -> None:
        """An ended run (in the transaction that ends it): its rows go now; once that commits,
        its objects that nothing else holds are deleted."""
        orphans = self._table.release_run(run_id)
        self._run_bytes.pop(run_id, None)
        self._transaction.after_commit(lambda: self._collect(orphans))

    def expire_pending(self) -> None:
        """Forget node uploads that waited longer than the TTL for a reply; delete them
        unless something else holds them."""
        self._collect(self._table.expire_pending(self._clock.now().timestamp()))

    def collect_unowned(self, *, others_alive: bool = False) -> tuple[int, int]:
        """At start-up: delete every stored object that belongs to no run and is pending for
        no node, and every partial write (no upload of this process is in progress yet: these
        are the writes of a link that died); with ``others_alive`` (other link processes on
        the database, which may be writing theirs), only those older than the pending TTL.
        Returns how many of each."""
        held = self._table.all_held() | self._table.all_pending()
        old_enough = self._clock.now().timestamp() - self.limits.pending_ttl

        def collectable(path: Path) -> bool:
            if not others_alive:
                return True
            try:
                return path.stat().st_mtime < old_enough
            except FileNotFoundError:
                return False

        unowned = [
            object_id
            for object_id in self.store.object_ids()
            if object_id not in held and collectable(self.store.path(object_id))
        ]
        self.store.delete(unowned)
        partial = [path for path in self.store.partial_writes() if collectable(path)]
        for path in partial:
            path.unlink(missing_ok=True)
        return len(unowned), len(partial)

    def pending_bytes(self, node_id: int) -> int:
        """Bytes charged for what node ``node_id`` uploaded and no reply names yet (or is
        uploading now)."""
        _, charged = self._table.pending_total(node_id)
        return charged + self._node_reserved[node_id]

    def run_bytes(self, run_id: int) -> int:
        """Bytes charged for run ``run_id``'s objects (and its uploads in progress)."""
        return self._stored_bytes(run_id) + self._run_reserved[run_id]

    # --- what the scopes do ----------------------------------------------------------------

    def _run_readable(self, run_id: int, object_ids: Collection[str]) -> set[str]:
        return self._table.of_run(run_id, object_ids)

    def _node_readable(self, node_id: int, object_ids: Collection[str]) -> set[str]:
        own = set(self._table.pending_of(node_id, object_ids))
        return own | self._table.of_node(node_id, object_ids)

    def _reserve_for_run(self, run_id: int, object_id: str, size: int) -> Reservation:
        size = charge(size)
        self._check_run_room(run_id, size)
        self._uploading[object_id] += 1
        self._run_reserved[run_id] += size

        def release() -> None:
            self._done_uploading(object_id)
            _decrease(self._run_reserved, run_id, size)

        def commit() -> None:
            release()
            if not self._run_active(run_id):
                self._collect([object_id])  # the run ended during the upload
            elif not self._table.of_run(run_id, [object_id]):
                self._add(run_id, {object_id: size}, ())

        return _Upload(commit, release)

    def _reserve_for_node(self, node_id: int, object_id: str, size: int) -> Reservation:
        size = charge(size)
        self.expire_pending()
        used = self.pending_bytes(node_id)
        limit = self.limits.max_node_pending_bytes
        released = (
            f"(an upload is released when a reply names it, or after "
            f"{self.limits.pending_ttl:.0f} s)"
        )
        if used + size > limit:
            raise QuotaExceeded(
                f"node {node_id}'s uploads that no reply names yet would take {used + size} "
                f"bytes, over the link's --max-node-pending-storage of {limit} bytes {released}"
            )
        count = self._table.pending_total(node_id)[0] + self._node_uploads[node_id]
        if count >= self.limits.max_node_pending_objects:
            raise QuotaExceeded(
                f"node {node_id} has {count} uploads that no reply names yet, the most the link "
                f"holds for one node {released}"
            )
        self._uploading[object_id] += 1
        self._node_reserved[node_id] += size
        self._node_uploads[node_id] += 1

        def release() -> None:
            self._done_uploading(object_id)
            _decrease(self._node_reserved, node_id, size)
            _decrease(self._node_uploads, node_id, 1)

        def commit() -> None:
            release()
            expires_at = self._clock.now().timestamp() + self.limits.pending_ttl
            self._table.add_pending(node_id, object_id, size, expires_at)

        return _Upload(commit, release)

    # --- internals -------------------------------------------------------------------------

    def _stored_bytes(self, run_id: int) -> int:
        if self._shared:  # other link processes add to runs too: the database's count
            return self._table.run_bytes(run_id)
        if run_id not in self._run_bytes:
            self._run_bytes[run_id] = self._table.run_bytes(run_id)
        return self._run_bytes[run_id]

    def _check_run_room(self, run_id: int, more: int) -> None:
        used = self.run_bytes(run_id)
        if more and used + more > self.limits.max_run_bytes:
            raise QuotaExceeded(
                f"run {run_id} would hold {used + more} bytes of objects, over the link's "
                f"--max-run-storage of {self.limits.max_run_bytes} bytes"
            )

    def _add(
        self, run_id: int, charges: Mapping[str, int], grants: Collection[tuple[int, str]]
    ) -> None:
        """Record ``charges`` (objects not yet the run's) and ``grants`` for ``run_id``."""
        stored = self._stored_bytes(run_id)
        self._table.add(run_id, charges, grants)
        # At once, so later checks in the same transaction count it; forgotten on rollback.
        self._run_bytes[run_id] = stored + sum(charges.values())
        self._transaction.after_rollback(lambda: self._forget_bytes(run_id))

    def _forget_bytes(self, run_id: int) -> None:
        self._run_bytes.pop(run_id, None)

    def _collect(self, object_ids: Collection[str]) -> None:
        """Delete those of ``object_ids`` that no run, pending upload or upload holds."""
        if not object_ids:
            return
        loose = [i for i in object_ids if not self._uploading[i]]
        pending = self._table.pending_any(loose)
        loose = [i for i in loose if i not in pending]
        held = self._table.held(loose)
        self.store.delete(object_id for object_id in loose if object_id not in held)

    def _done_uploading(self, object_id: str) -> None:
        _decrease(self._uploading, object_id, 1)

    def _run_active(self, run_id: int) -> bool:
        run = self._runs.get(run_id)
        return run is not None and not run.ended


def _decrease(counter: Counter[_K], key: _K, amount: int) -> None:
    """Take ``amount`` off ``counter[key]``, forgetting the key at zero (no entry per run or
    node ever seen)."""
    counter[key] -= amount
    if counter[key] <= 0:
        del counter[key]


class _Upload:
    """A reservation: exactly one of commit and cancel takes effect."""

    def __init__(self, on_commit: Callable[[], None], on_cancel: Callable[[], None]) -> None:
        self._on_commit: Callable[[], None] | None = on_commit
        self._on_cancel = on_cancel

    def commit(self) -> None:
        if self._on_commit is not None:
            on_commit, self._on_commit = self._on_commit, None
            on_commit()

    def cancel(self) -> None:
        if self._on_commit is not None:
            self._on_commit = None
            self._on_cancel()


class _RunScope:
    def __init__(self, objects: LinkObjects, run_id: int) -> None:
        self._objects = objects
        self._run_id = run_id

    def readable(self, object_ids: Collection[str]) -> set[str]:
        return self._objects._run_readable(self._run_id, object_ids)

    def reserve(self, object_id: str, size: int) -> Reservation:
        return self._objects._reserve_for_run(self._run_id, object_id, size)


class _NodeScope:
    def __init__(self, objects: LinkObjects, node_id: int) -> None:
        self._objects = objects
        self._node_id = node_id

    def readable(self, object_ids: Collection[str]) -> set[str]:
        return self._objects._node_readable(self._node_id, object_ids)

    def reserve(self, object_id: str, size: int) -> Reservation:
        return self._objects._reserve_for_node(self._node_id, object_id, size)
