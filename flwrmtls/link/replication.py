"""Several link processes on one PostgreSQL database act as one link (each is a replica).

Rules:

* What each process holds in memory is either in the database or follows it by announcement
  (PostgreSQL LISTEN/NOTIFY on :data:`~flwrmtls.state.database.CHANNEL`; no other service):

  ======================================  ==================================================
  what                                    how the other replicas learn of it
  ======================================  ==================================================
  sessions, unregistered and refused      ``node`` announced in the changing transaction;
  nodes, EC keys, identity pins           each replica reads that row again (and a miss in
                                          a mirror reads the database before refusing)
  a run's end                             ``run-ended``: its tokens stop working, and the
                                          replica running its ServerApp stops the process
  long-poll wake-ups                      ``wake``: every key notified on one replica wakes
                                          the waiters on the others (batched per loop turn)
  failed authentications, and every       ``failed``: counted in every replica's budget for
  Enrollment API call                     that address and listener
  EC-key nonces                           claimed in the database (``ec_nonces``)
  a node's pending uploads                rows (``pending_objects``)
  join tokens, enrollment requests and    rows, each change one conditional statement or
  renewals                                one locked transaction (``enroll_*``)
  ======================================  ==================================================

* An announcement is delivered only after the transaction that made the change commits, and
  never after a rollback; a replica skips its own.
* The listening connection is watched: when it breaks, the replica connects again and reads
  every mirror again (announcements made meanwhile are lost), and judges its open calls again.
* Liveness and leases (:mod:`flwrmtls.state.replicas`): every ``RENEW_EVERY`` seconds each
  replica renews its own row and ends the runs of replicas that are lost ("link replica
  lost"), then forgets nonces whose window has closed.
* On SQLite there is one link: nothing here runs but the replica's row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from flwrmtls.auth.ratelimit import FailureLimiter
from flwrmtls.clock import Clock
from flwrmtls.runs.notify import Notifier
from flwrmtls.state.database import CHANNEL, MAX_PAYLOAD, DatabaseError
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.replicas import RENEW_EVERY

if TYPE_CHECKING:
    from flwrmtls.runs.serverapps import ServerApps

__all__ = ["Replication"]

log = logging.getLogger("flwrmtls.link")

_RECONNECT_SECONDS = 1.0


class Replication:
    def __init__(
        self,
        state: LinkState,
        clock: Clock,
        *,
        notifier: Notifier,
        runs: ServerApps,
        limiters: dict[str, FailureLimiter],
        access_changed: Callable[[], object],
        description: str,
    ) -> None:
        self._state = state
        self._clock = clock
        self._notifier = notifier
        self._runs = runs
        self._limiters = limiters
        self._access_changed = access_changed
        self.description = description
        self._wakes: dict[Hashable, None] = {}
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        """Set while the announcements connection is up (tests wait for it)."""
        if state.shared:
            notifier.publish = self._publish_wake
            for name, limiter in limiters.items():
                limiter.observer = self._observer(name)

    def join(self) -> None:
        """At start-up, before anything is recovered: this process is a live replica."""
        self._state.replicas.join(
            self._state.replica_id, self.description, now=self._clock.now().timestamp()
        )

    def others_alive(self) -> bool:
        return bool(
            self._state.replicas.others_alive(
                self._state.replica_id, now=self._clock.now().timestamp()
            )
        )

    def start(self) -> None:
        if not self._state.shared:
            return
        self._tasks.append(asyncio.create_task(self._listen()))
        self._tasks.append(asyncio.create_task(self._renew()))

    async def stop(self) -> None:
        """Cancel the loops and leave: the replica's runs have ended by now."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(DatabaseError):
            self._state.replicas.leave(self._state.replica_id)

    # --- announcing -----------------------------------------------------------------------

    def _publish_wake(self, key: Hashable) -> None:
        self._wakes[key] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_wakes)

    def _flush_wakes(self) -> None:
        """One announcement per loop turn for every key notified in it (no transaction is
        open between loop callbacks: a transaction never awaits)."""
        self._flush_scheduled = False
        keys = [list(key) if isinstance(key, tuple) else [key] for key in self._wakes]
        self._wakes.clear()
        batch: list[list[object]] = []
        size = 100
        try:
            for key in keys:
                length = len(json.dumps(key)) + 1
                if batch and size + length >= MAX_PAYLOAD:
                    self._state.db.publish("wake", batch)
                    batch, size = [], 100
                batch.append(key)
                size += length
            if batch:
                self._state.db.publish("wake", batch)
        except DatabaseError as error:
            log.warning("could not wake the other links' long polls: %s", error)

    def _observer(self, name: str) -> Callable[[str, bytes], None]:
        def observe(host: str, pair: bytes) -> None:
            try:
                self._state.db.publish("failed", [name, host, pair.hex()])
            except DatabaseError as error:
                log.warning("could not tell the other links of a failed call: %s", error)

        return observe

    # --- receiving ------------------------------------------------------------------------

    def received(self, topic: str, value: object) -> None:
        """Another replica's announcement (public for tests)."""
        if topic == "wake" and isinstance(value, list):
            for key in value:
                self._notifier.wake(tuple(key) if isinstance(key, list) else key)
        elif topic == "failed" and isinstance(value, list) and len(value) == 3:
            limiter = self._limiters.get(str(value[0]))
            if limiter is not None:
                limiter.failed_elsewhere(str(value[1]), bytes.fromhex(str(value[2])))
        elif topic == "run-ended" and isinstance(value, int):
            self._state.apply(topic, value)
            self._runs.ended_elsewhere(value)
        elif self._state.apply(topic, value):
            self._access_changed()

    def resync(self) -> None:
        """Announcements may have been missed: read every mirror again."""
        self._state.reload()
        self._runs.check_ended()
        self._access_changed()

    async def _listen(self) -> None:
        import psycopg  # PostgreSQL only: a link on SQLite never loads it (22 MiB)

        url = self._state.db.libpq_url
        origin = self._state.replica_id
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.resync()
                    self.listening.set()
                    async for note in conn.notifies():
                        try:
                            sender, topic, value = json.loads(note.payload)
                        except (ValueError, TypeError):
                            continue
                        if sender != origin:
                            self.received(str(topic), value)
            except (psycopg.Error, OSError, DatabaseError) as error:
                self.listening.clear()
                log.warning(
                    "the link's announcements connection to %s failed (%s): reconnecting",
                    self._state.path, " ".join(str(error).split()),
                )  # fmt: skip
                await asyncio.sleep(_RECONNECT_SECONDS)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            now = self._clock.now().timestamp()
            try:
                if not self._state.replicas.renew(self._state.replica_id, now=now):
                    log.warning(
                        "this link was declared lost by the others (its lease passed): its "
                        "runs have ended; it serves on"
                    )
                    self.join()
                    self._runs.check_ended()  # their announcements may not have come
                self._runs.end_lost_runs()
                self._state.nonces.expire(now)
            except DatabaseError as error:
                log.warning("renewing this link's lease failed: %s", error)
