"""The node's long-running loop: activate, heartbeat, take work, reconnect, stop cleanly.

A node never gives up on a link that may be restarting: only a refusal the link states, or a
cause the node finds in its own certificate, ends it before its retry bounds run out.

=========================  ===============================================================
what happens               what the node does
=========================  ===============================================================
link unreachable           retry with exponential backoff (1 s doubling to 30 s), within
(connection refused, a     ``--max-retries`` attempts and ``--max-wait-time`` seconds
call cut by a link that    (default: no limit), then give up with the last error
went away, no answer)
link restarted             the next call fails as unreachable, then it activates again and
                           gets the same node id (derived from its certificate)
handshake closed without   :class:`~flwrmtls.errors.HandshakeClosed`: a refusal and a link
a word                     dying mid-handshake look alike. The node checks its own
                           certificate (:mod:`flwrmtls.wire.errors` does, through the
                           connection context): a definite cause (expired, not yet valid,
                           no clientAuth) ends it at once, naming the cause; otherwise it is
                           retried like an unreachable link, each line naming both
                           possibilities and any likely cause (a chain that does not lead
                           to ``--root-certificates``)
credentials refused        the link said why (revoked, unregistered, not permitted, TLS
                           mismatch): stop at once with its reason (retrying cannot help)
session superseded         stop: another process activated the same identity later
an answer outside the      :class:`~flwrmtls.fleet.client.BadAnswer` (a heartbeat interval
protocol                   of 0, NaN or 1e300, an id past 2^63): stop at once, the line
                           naming the field, its value and the range (the node never uses
                           or guesses such a value; :mod:`flwrmtls.wire.bounds`)
session unknown            activate again
work arrives               the long poll returns at once; the message goes to its run's
                           ClientApp (see :mod:`flwrmtls.node.clientapps`); if its run cannot
                           start (e.g. over ``--max-object-storage``) it gets an error reply
a run ends                 its ClientApp is told to exit and is reaped
stop requested             stop ClientApps, deactivate (best effort) and return
=========================  ===============================================================

No message this node pulled is dropped. The node keeps each one until it is handed to its
run's ClientApp (then acknowledged to the link with a later pull), answered, or its run is
known to have ended, whatever happens to the others of its batch:

=========================  ===============================================================
handing a message over     what the node does with it
=========================  ===============================================================
the run's ClientApp queue  keep nothing: the ClientApp takes it, and the next pull
takes it                   acknowledges it
the link says the run is   drop it, and what else it holds of that run (``run-ended``,
over for this node         ``run-not-for-node``; ended runs of its own too)
the link is unreachable,   keep it, and the rest of the batch: handed over once active
or the session ended       again, before anything new (the link hands out again what was
                           not acknowledged; a repeat is taken once)
anything else (the         answer it with a ``LINK_ERROR`` error reply naming the cause,
ClientApp cannot start,    so its ServerApp learns at once (while the link cannot be
the bundle is unusable)    reached, keep it; if the link refuses the reply, drop it)
=========================  ===============================================================

The agent is a coroutine on the node's event loop, beside ClientAppIo and the ClientApp
processes (:mod:`flwrmtls.node.clientapps`). Heartbeats are a task of their own, so a long poll
or a slow download never delays them. Calls to the link block (blocking gRPC, the same client
as the tests' and the CLI's), so each runs in a worker thread and hands back its answer; a long
poll in progress is cancelled within a quarter of a second when the node stops, its
certificate is rotated or its heartbeat fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import FlwrmtlsError, LinkUnreachable
from flwrmtls.fleet.client import Pulled, RunUnavailable, Session, SessionEnded
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.proto import common_pb2
from flwrmtls.wire.bounds import LONG_POLL_SECONDS

__all__ = ["FleetCalls", "NodeAgent", "NodeRuns", "RetryPolicy"]

log = logging.getLogger("flwrmtls.node")


class FleetCalls(Protocol):
    """What the agent asks of the link (:class:`~flwrmtls.fleet.client.FleetClient`: blocking
    calls, made in worker threads; a fake in the agent's unit tests)."""

    def activate(self) -> Session: ...
    def heartbeat(self, session: Session) -> float: ...
    def pull(
        self,
        session: Session,
        *,
        wait: float,
        active_run_ids: Sequence[int],
        acked: Sequence[str] = (),
        cancel: Sequence[threading.Event] = (),
    ) -> Pulled | None: ...
    def deactivate(self, session: Session) -> None: ...


class NodeRuns(Protocol):
    """What the agent hands work to (:class:`~flwrmtls.node.clientapps.ClientApps`; a fake in
    the agent's unit tests)."""

    session: Session | None

    def active_run_ids(self) -> list[int]: ...
    def pending_acks(self, limit: int = 1000) -> list[str]: ...
    def acks_sent(self, message_ids: list[str]) -> None: ...
    def end_runs(self, run_ids: list[int]) -> None: ...
    async def deliver(self, message: common_pb2.Message) -> bool: ...
    async def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int | None = None
    """Reconnect attempts before giving up; None: no limit."""
    max_wait_time: float | None = None
    """Seconds without the link before giving up; None: no limit."""
    initial_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_delay, self.initial_delay * 2 ** (failures - 1)))

    def exhausted(self, failures: int, waited: float) -> bool:
        if self.max_retries is not None and failures > self.max_retries:
            return True
        return self.max_wait_time is not None and waited >= self.max_wait_time


class NodeAgent:
    def __init__(
        self,
        client: FleetCalls,
        *,
        apps: NodeRuns | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._apps = apps
        self._retry = retry or RetryPolicy()
        self._clock = clock or SystemClock()
        self.session: Session | None = None
        self.connected = False
        """True while a session with the link is active (readiness, metrics)."""
        self._stop_requested = threading.Event()
        """Set by :meth:`request_stop`, from any thread."""
        self._cancel_pull = threading.Event()
        """Ends a long poll in progress (stop, rotation, a failed heartbeat)."""
        self._wake = asyncio.Event()
        """Wakes the agent's waits on its loop (stop, rotation)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect = False
        self._held: dict[str, common_pb2.Message] = {}
        """Messages pulled and not yet handed over, oldest first (kept across sessions)."""

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        """Stop serving (from any thread, or a signal handler): a long poll is cancelled,
        ClientApps are stopped, the node deactivates."""
        self._stop_requested.set()
        self._cancel_pull.set()
        self._wake_up()

    def request_reconnect(self) -> None:
        """Activate again over a new channel (the certificate was rotated): on the loop."""
        self._reconnect = True
        self._cancel_pull.set()
        self._wake_up()

    def _wake_up(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the agent is asked to stop."""
        self._wake.clear()
        if self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def run(self) -> None:
        """Serve until stopped; raise a FlwrmtlsError when the node must give up."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        lost_at: float | None = None
        try:
            while not self.stopping:
                try:
                    session = await asyncio.to_thread(self._client.activate)
                    self._reconnect = False  # this session is on the newest channel
                    self.session = session
                    if self._apps is not None:
                        self._apps.session = session
                    if failures:
                        log.info("link reachable again after %d failed attempt(s)", failures)
                    failures, lost_at = 0, None
                    log.info(
                        "node active: node id %d, identity %s, heartbeat every %.1fs",
                        session.node_id, session.identity, session.heartbeat_interval,
                    )  # fmt: skip
                    await self._serve(session)
                except LinkUnreachable as error:
                    failures += 1
                    now = self._clock.monotonic()
                    lost_at = lost_at if lost_at is not None else now
                    waited = now - lost_at
                    if self._retry.exhausted(failures, waited):
                        raise LinkUnreachable(
                            f"gave up after {failures} attempt(s) over {waited:.0f}s: {error}"
                        ) from None
                    delay = self._retry.delay(failures)
                    log.warning("%s; retrying in %.0fs (attempt %d)", error, delay, failures)
                    await self._pause(delay)
                except SessionEnded as error:
                    if error.superseded:
                        raise
                    log.warning("%s; activating again", error)
        finally:
            if self._apps is not None:
                await self._apps.shutdown()
        await self._leave()

    async def _serve(self, session: Session) -> None:
        """Heartbeat in a task and take work here, until stopped or either fails."""
        self._cancel_pull.clear()
        if self.stopping:
            self._cancel_pull.set()
        done = asyncio.Event()
        failure: list[FlwrmtlsError] = []

        async def heartbeat() -> None:
            interval = session.heartbeat_interval
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), interval)
                if done.is_set() or self.stopping:
                    return
                try:  # checked: 1 s to a day
                    interval = await asyncio.to_thread(self._client.heartbeat, session)
                except FlwrmtlsError as error:
                    failure.append(error)
                    done.set()
                    self._cancel_pull.set()
                    return

        beat = asyncio.create_task(heartbeat())
        self.connected = True
        try:
            while not self.stopping and not done.is_set():
                if self._reconnect:
                    self._reconnect = False
                    log.info("activating again with the new certificate")
                    break
                await self._take_work(session)
        finally:
            self.connected = False
            done.set()
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        if failure:
            raise failure[0]

    async def _take_work(self, session: Session) -> None:
        apps = self._apps
        if apps is not None:
            await self._hand_over(apps)  # what a failed batch left, before anything new
        active = apps.active_run_ids() if apps is not None else []
        acked = apps.pending_acks() if apps is not None else []
        pulled = await asyncio.to_thread(
            lambda: self._client.pull(
                session, wait=LONG_POLL_SECONDS, active_run_ids=active, acked=acked,
                cancel=[self._cancel_pull],
            )
        )  # fmt: skip
        if apps is None or pulled is None:
            return
        apps.acks_sent(acked)
        apps.end_runs(pulled.ended_run_ids)
        for message in pulled.messages:
            self._held.setdefault(message.message_id, message)
        await self._hand_over(apps)

    async def _hand_over(self, apps: NodeRuns) -> None:
        """Hand each held message to its run's ClientApp queue (see the module's table).
        Raises LinkUnreachable or SessionEnded with the rest still held."""
        for message_id, message in list(self._held.items()):
            if message_id not in self._held:
                continue  # dropped with its run below
            try:
                if not await apps.deliver(message):
                    log.info("run %d ended: its message %s is dropped", message.run_id,
                             message_id)  # fmt: skip
            except RunUnavailable as error:
                self._drop_run(message.run_id, str(error), ended=error.ended)
                continue
            except (LinkUnreachable, SessionEnded):
                raise
            except (FlwrmtlsError, OSError, ValueError, QuotaExceeded) as error:
                # deliver sent the message an error reply (LINK_ERROR) naming the cause
                log.error("run %d: cannot start its ClientApp: %s", message.run_id, error)
            self._held.pop(message_id, None)

    def _drop_run(self, run_id: int, reason: str, *, ended: bool) -> None:
        dropped = [i for i, m in self._held.items() if m.run_id == run_id]
        for message_id in dropped:
            del self._held[message_id]
        level = logging.INFO if ended else logging.WARNING
        log.log(level, "%s: dropping its %d message(s) held here", reason, len(dropped))

    async def _leave(self) -> None:
        if self.session is None:
            return
        try:
            await asyncio.to_thread(self._client.deactivate, self.session)
            log.info("node deactivated")
        except FlwrmtlsError as error:  # leaving is best effort
            log.info("could not deactivate cleanly: %s", error)
