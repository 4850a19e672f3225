"""The node's runs: one ClientApp process per run, reused for every message of that run.

Rules:

* The first message of a run makes the node fetch the run (bundle hash, run config) and the
  bundle by its hash; the ClientApp process verifies its SHA-256 when it unpacks it. What the
  node fetches from the link is written with its size checked and hashed once on this host,
  by the process that reads it (the ClientApp, or the node before it serves an object over
  ClientAppIo), so a byte is hashed once per host, not once per process. If the run cannot be
  started (its bundle is over ``--max-object-storage``, the link cannot give it, no process
  starts), the message gets an error reply (``LINK_ERROR``, with the reason) at once. When
  the link says the run is over for this node (``run-ended``, ``run-not-for-node``), there
  is nothing to answer; when the link cannot be reached, the caller keeps the message.
* The ClientApp process gets its run token on standard input (never its command line); the
  node keeps the token's hash only. The process reaches the node over ClientAppIo. It starts
  isolated (``python -I -u``, in ``/``: see :mod:`flwrmtls.runs.supervisor`), so nothing in the
  node's working directory is imported.
* One spare ClientApp process waits, its imports done, for a run to need it: a new run's
  first message is handed to it instead of waiting for a process to start (half a second of
  CPU per node on this kind of machine). A spare holds no token and no run until it is given
  one on standard input. The supervisor (:mod:`flwrmtls.runs.supervisor`, the link's too)
  starts the next spare once the node has had no active run for ``SPARE_DELAY`` seconds (so
  that it never competes with a run for the CPU), and stopping the node terminates it.
* Messages wait in the run's queue until the ClientApp pulls them; its replies go back to the
  link with the objects they reference. A message counts as handed off when its ClientApp
  pulls it: then, and only then, the node acknowledges it to the link (with its next pull,
  :meth:`ClientApps.pending_acks`), so a message the node took but never handed to a
  ClientApp (the node crashed, or the ClientApp died first) is handed out again by the link.
* A message is run at most once per node: each run remembers the ids it received (the last
  ``SEEN_LIMIT``). One delivered again (its acknowledgement was late or lost, or the node
  activated again) is not queued a second time; if its ClientApp already has it, it is
  acknowledged again. A message of a run that has ended here is dropped.
* A reply may only answer a message this node received for that run. A reply the link will
  not store (over a run's or this node's storage bound) is replaced by an error reply
  (``LINK_ERROR``, with the link's reason), so the ServerApp learns of it at once instead of
  waiting for a reply that never comes.
* A run's ClientApp may read only its run's objects: the run's bundle, the objects named by
  the messages this node received for the run, and those it stored itself (pushed, or named
  by its replies); any other is "no object", as if it were not stored, and the node does not
  fetch it from the link (``NodeRun.objects``, seen through a
  :class:`~flwrmtls.node.storage.RunScope`).
* A run's app may need packages: they are judged when the run is opened, and its environment
  prepared while its messages wait in its queue (:mod:`flwrmtls.node.runenvs`); its
  ClientApp starts with that environment's interpreter, once (``NodeRun.starting``: the
  install's end and a delivery may ask at the same moment). A run that cannot run here gets
  an error reply (``LINK_ERROR``) naming the node and the cause for every message of it,
  queued or to come, so its ServerApp learns it at once.
* A run outlives the node's session: a call of the run that the link answers with the old
  session's end is made again on the new session (:mod:`flwrmtls.node.linkcalls`), so a
  rotation mid-run costs the run nothing.
* Every object the node receives (fetched from the link, pushed by a ClientApp) is bounded
  by ``--max-object-storage`` before its first byte is written (:mod:`flwrmtls.node.storage`).
* A run's objects (its bundle, its messages' arrays, its replies' arrays) are deleted when
  the run ends, except those another active run holds; when no run is active the store is
  emptied. The ClientApps this node starts share the store's directory (same host, same OS
  user): they read a message's arrays from it once the node has fetched them (verifying
  each object's SHA-256 as they read) and write their replies' arrays into it, so array
  bytes cross no socket between node and ClientApp.
* An object whose bytes no longer match its id (a disk fault, a stray writer) is deleted and
  fetched again from the link, once per read: a ClientApp reading the shared directory
  deletes it and asks for it again; served over ClientAppIo, the node checks it first
  (:meth:`ClientApps.ensure_object` with ``verify``). Fetched again, it is verified again.
* When the link says a run ended, its token stops working and the process is told (a waiting
  pull returns "run ended" and it exits). A process still running ``END_GRACE`` (5 s) later
  is terminated, and killed 5 s after that, on the injected clock (the supervisor's rule).
  Every process that exits is waited for (no zombies); stopping the node stops every
  ClientApp process. A process that dies while its run goes on is started again for the
  run's next message. An ended run is forgotten when its process exits, or at once when it
  has none (it ended while its environment was prepared, could not run here, or its process
  failed to start); the ids of the last ``ENDED_LIMIT`` forgotten runs are kept until the
  node activates again, so a late message of one is dropped without asking the link (a link
  whose database was reset may give a new run an old id).
* Everything here runs on the node's event loop (:mod:`flwrmtls.node.main`), which alone
  reads and changes the runs: the agent's deliveries, ClientAppIo's calls and the
  supervisor's decisions take turns on it, so no lock is needed. What blocks (a call to the
  link, hashing an object) runs in a worker thread (``asyncio.to_thread``) and hands back a
  value; it touches no run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from flwrmtls.auth.tokens import MemoryTokenStore
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import FlwrmtlsError, LinkUnreachable
from flwrmtls.fleet.client import (
    FleetClient,
    ObjectMissing,
    OverQuota,
    RunUnavailable,
    Session,
    SessionEnded,
)
from flwrmtls.heap import release_free_memory
from flwrmtls.keyvalues import Value, values_from_proto
from flwrmtls.node.linkcalls import LinkCalls
from flwrmtls.node.noderun import AppUnusable, NodeRun, refused_reply, undelivered_reply
from flwrmtls.node.runenvs import RunEnvs
from flwrmtls.node.storage import DEFAULT_MAX_OBJECT_STORAGE, NodeStorage, RunScope
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.objects.store import CorruptObject, ObjectStore, check_object_id
from flwrmtls.objects.transfer import PARALLEL_STREAMS
from flwrmtls.proto import common_pb2
from flwrmtls.runs.appenvs import AppEnvs, EnvPlan
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.supervisor import AppSupervisor, Spawn, spawn_process

__all__ = ["END_GRACE", "SEEN_LIMIT", "ClientApps", "NodeRun"]

log = logging.getLogger("flwrmtls.node.clientapps")

END_GRACE = 5.0
"""Seconds a ClientApp of an ended run may take to exit before it is terminated."""
SEEN_LIMIT = 10_000
"""Message ids each run remembers, to take a message delivered twice once."""
ENDED_LIMIT = 10_000
"""Ended runs whose ids the node remembers after forgetting their state."""


class ClientApps:
    """The node's runs and their ClientApp processes, on the node's event loop."""

    def __init__(
        self,
        client: FleetClient,
        objects: ObjectStore,
        *,
        node_config: dict[str, Value],
        tokens: MemoryTokenStore | None = None,
        share_objects: bool = True,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_STORAGE,
        clock: Clock | None = None,
        spawn: Spawn = spawn_process,
        envs: AppEnvs | None = None,
    ) -> None:
        """``envs``: where the runs' app environments are judged and built (None: apps run
        with the node's interpreter, their requirements not looked at)."""
        self._client = client
        self.objects = objects
        self.storage = NodeStorage(objects, max_object_bytes)
        self.node_config = node_config
        self.tokens = tokens or MemoryTokenStore()
        self.share_objects = share_objects
        """Tell ClientApps the object directory, so array bytes skip the ClientAppIo hop."""
        self._clock = clock or SystemClock()
        self._link = LinkCalls(self._clock)
        self.run_envs = RunEnvs(envs, objects, client, self._link)
        self._runs: dict[int, NodeRun] = {}
        self._ended: OrderedDict[int, None] = OrderedDict()
        """The last ENDED_LIMIT runs that ended here and were forgotten: a late message of
        one is dropped, without asking the link."""
        self._acks: dict[str, None] = {}
        """Messages handed to their ClientApps, not yet acknowledged to the link (in order)."""
        self._inboxes = Notifier()
        """Wakes a ClientApp's waiting pull: ("run", run_id)."""
        self.processes = AppSupervisor(
            "flwrmtls.appio.clientapp_process", "--clientappio-api-address", self._clock,
            busy=lambda: bool(self.active_run_ids()), spawn=spawn, exit_grace=END_GRACE,
            what="ClientApp",
        )  # fmt: skip
        self._ticking: asyncio.Task[None] | None = None
        self._installs: set[asyncio.Task[None]] = set()
        """The app environments being prepared (their runs' installs)."""

    @property
    def clientappio_address(self) -> str:
        return self.processes.address

    def listen(self, clientappio_address: str) -> None:
        """ClientAppIo listens at ``clientappio_address``: ClientApps may start (on the
        running loop: the supervisor's ticks start here)."""
        self.processes.listen(clientappio_address)
        self._ticking = asyncio.get_running_loop().create_task(self.processes.run())

    @property
    def session(self) -> Session | None:
        """The node's session with the link, set by the agent each time it activates."""
        return self._link.session

    @session.setter
    def session(self, session: Session | None) -> None:
        if session is not None and session != self._link.session:
            # A new activation: the link may have lost its runs (a database reset) and reuse
            # their ids, so a forgotten run's id no longer says its messages are stale.
            self._ended.clear()
        self._link.session = session

    @property
    def node_id(self) -> int:
        return self.session.node_id if self.session else 0

    def active_run_ids(self) -> list[int]:
        return [run_id for run_id, run in self._runs.items() if not run.ended]

    def run(self, run_id: int) -> NodeRun | None:
        return self._runs.get(run_id)

    def scope(self, run_id: int) -> RunScope:
        """What run ``run_id``'s ClientApp may read and push (nothing, once the node has
        forgotten the run)."""
        run = self.run(run_id)
        return RunScope(run.objects if run is not None else set(), self.storage)

    # --- from the agent ----------------------------------------------------------------------

    async def deliver(self, message: common_pb2.Message) -> bool:
        """Queue a message for its run's ClientApp, starting the run's process if needed.

        Returns False when the message was dropped because its run has ended here. Raises
        :class:`~flwrmtls.fleet.client.RunUnavailable` when the link says the run will give
        this node no work, and LinkUnreachable or SessionEnded when the link was lost (the
        caller keeps the message). If starting the run fails otherwise, the message gets an
        error reply saying why and the error is raised for the caller to log.
        """
        run = self.run(message.run_id)
        if (run is not None and run.ended) or message.run_id in self._ended:
            return False
        try:
            run = run or await self._open(message.run_id)
            if run.unusable:
                raise AppUnusable(run.unusable)
            if run.python is not None:  # else it starts once its environment is ready
                await self._ensure_process(run)  # one that died starts again, even for a repeat
        except (LinkUnreachable, SessionEnded, RunUnavailable):
            raise
        except AppUnusable as error:
            await self._reply_undelivered(message, str(error))
            raise
        except (FlwrmtlsError, OSError, ValueError, QuotaExceeded) as error:
            await self._reply_undelivered(message, f"cannot start the run's ClientApp: {error}")
            raise
        self.enqueue(run, message)
        if run.unusable:  # found unusable while this was being queued: answer it too
            await self._answer_queued(run)
        return True

    async def _reply_undelivered(self, message: common_pb2.Message, reason: str) -> None:
        """Send ``message`` an error reply; LinkUnreachable or SessionEnded when the link is
        lost (the caller keeps the message to try again); a refusal of the reply (its run
        ended meanwhile) is logged."""
        now = self._clock.now().timestamp()  # a timestamp in the message, as replies carry
        try:
            await self._link.on_link(
                lambda session: self._client.push(
                    session, [undelivered_reply(message, session.node_id, reason, now)]
                )
            )
        except (LinkUnreachable, SessionEnded):
            raise
        except FlwrmtlsError as error:
            log.warning("run %d: could not send the error reply to %s: %s",
                        message.run_id, message.message_id, error)  # fmt: skip

    def enqueue(self, run: NodeRun, message: common_pb2.Message) -> None:
        """Record ``message`` (and its objects) as received for ``run``, and queue it for the
        ClientApp, unless the run has it already (then acknowledge it again, if handed off)."""
        handed = run.seen.get(message.message_id)
        if handed is not None:
            if handed:
                self._acks[message.message_id] = None
            log.info("run %d: message %s delivered again; already %s", run.run_id,
                     message.message_id, "handed off" if handed else "queued")  # fmt: skip
            return
        run.seen[message.message_id] = False
        while len(run.seen) > SEEN_LIMIT:
            run.seen.popitem(last=False)
        run.received.add(message.message_id)
        run.objects.update(message.object_ids)
        run.inbox.append(message)
        self._inboxes.notify(("run", run.run_id))

    def _handed_off(self, run: NodeRun, message: common_pb2.Message) -> None:
        """The ClientApp pulled ``message``: acknowledge it to the link with the next pull."""
        if message.message_id in run.seen:
            run.seen[message.message_id] = True
        self._acks[message.message_id] = None

    def pending_acks(self, limit: int = 1000) -> list[str]:
        """Up to ``limit`` message ids handed off and not yet acknowledged to the link."""
        return list(self._acks)[:limit]

    def acks_sent(self, message_ids: list[str]) -> None:
        """The link has the acknowledgement of ``message_ids`` (a pull carrying them succeeded)."""
        for message_id in message_ids:
            self._acks.pop(message_id, None)

    async def _open(self, run_id: int) -> NodeRun:
        info = await self._link.on_session(lambda session: self._client.get_run(session, run_id))
        check_object_id(info.bundle_hash)
        try:
            await self._link.on_session(
                lambda session: self._client.fetch_object(
                    session,
                    info.bundle_hash,
                    self.objects,
                    reserve=self.storage.reserve,
                    verify=False,  # the ClientApp checks it as it unpacks it
                )
            )
        except ObjectMissing:
            # The run's bundle is the run's own object: gone means the run ended since the
            # GetRun; asking again says so (RunUnavailable). Otherwise the link lost it.
            await self._link.on_session(lambda session: self._client.get_run(session, run_id))
            raise
        opened = self.run(run_id)  # another message of the run may have opened it meanwhile
        if opened is not None:
            return opened
        run = NodeRun(run_id, info.bundle_hash, values_from_proto(info.run_config))
        log.info("run %d: app bundle %s fetched", run_id, info.bundle_hash[:12])
        plan = await self.run_envs.plan(run)
        opened = self.run(run_id)  # again: judging it awaited
        if opened is not None:
            return opened
        self.adopt(run)
        if plan is not None:
            task = asyncio.get_running_loop().create_task(self._prepare(run, plan))
            self._installs.add(task)
            task.add_done_callback(self._installs.discard)
        return run

    async def _prepare(self, run: NodeRun, plan: EnvPlan) -> None:
        """The run's app environment built, then its ClientApp started; if either fails, the
        run is unusable here and its queued messages get error replies."""
        await self.run_envs.prepare(run, plan)
        if run.unusable:  # it failed while the run went on
            await self._answer_queued(run)
            return
        if run.ended:
            return
        try:
            await self._ensure_process(run)  # for the messages queued meanwhile, and those to come
        except (FlwrmtlsError, OSError) as error:
            run.unusable = f"cannot start the run's ClientApp: {error}"
            log.error("run %d: %s", run.run_id, run.unusable)
            await self._answer_queued(run)

    async def _answer_queued(self, run: NodeRun) -> None:
        """An error reply (``run.unusable``) to each message waiting in the run's queue; one the
        link cannot take now is handed out again by the link, and answered then."""
        while run.inbox:
            message = run.inbox.popleft()
            try:
                await self._reply_undelivered(message, run.unusable)
            except (LinkUnreachable, SessionEnded) as error:
                log.warning("run %d: the error reply to %s waits for the link: %s",
                            run.run_id, message.message_id, error)  # fmt: skip

    def adopt(self, run: NodeRun) -> NodeRun:
        """Track ``run`` (its bundle already in the object store)."""
        self._runs[run.run_id] = run
        return run

    async def _ensure_process(self, run: NodeRun) -> None:
        try:
            async with run.starting:  # one process, whoever asks (see NodeRun.starting)
                await self._start_process(run)
        finally:  # it ended while its process started, and the start failed
            self._forget_if_done(run)

    async def _start_process(self, run: NodeRun) -> None:
        if self.processes.alive(run.run_id):
            return
        exited = self.processes.get(run.run_id)
        if exited is not None:
            log.warning("run %d: ClientApp exited with %s; starting it again",
                        run.run_id, exited.process.returncode)  # fmt: skip
        token = self.tokens.issue(run.run_id, "clientapp")
        process = await self.processes.launch(token, run.python or "")
        run_id = run.run_id
        self.processes.supervise(
            run_id, process,
            on_line=lambda line: log.info("run %d ClientApp: %s", run_id, line),
            on_exit=lambda code: self._exited(run_id),
        )  # fmt: skip
        log.info("run %d: ClientApp process %d started", run_id, process.pid)
        if run.ended:  # it ended while the process started: its grace runs from now
            self.processes.end(run_id)

    def _exited(self, run_id: int) -> None:
        """A run's ClientApp exited: an ended run is forgotten with it."""
        run = self._runs.get(run_id)
        if run is not None:
            self._forget_if_done(run)

    def _forget_if_done(self, run: NodeRun) -> None:
        """An ended run with no process alive or starting is forgotten: its state goes, its id
        is kept (bounded) so its late messages drop. Asked when it ends (it may have no process:
        it ended while its environment installed, could not run here, its process had died),
        when its process exits, and when a start of its process fails."""
        if not run.ended or self._runs.get(run.run_id) is not run:
            return
        if self.processes.alive(run.run_id) or run.starting.locked():
            return
        del self._runs[run.run_id]
        self._ended[run.run_id] = None
        while len(self._ended) > ENDED_LIMIT:
            self._ended.popitem(last=False)

    def end_runs(self, run_ids: list[int]) -> None:
        for run_id in run_ids:
            run = self.run(run_id)
            if run is None or run.ended:
                continue
            run.ended = True
            run.cancel.set()  # an install of its environment in progress stops
            self._inboxes.notify(("run", run_id))  # a waiting pull learns it at once
            self.tokens.end_run(run_id)
            self.processes.end(run_id)  # END_GRACE to exit, then terminated, then killed
            self._forget_if_done(run)
            deleted = self.storage.release(run.objects, held=self._held_objects)
            log.info("run %d ended; %d of its objects deleted", run_id, deleted)
        if run_ids and not self.active_run_ids():
            # No run needs anything here: what a ClientApp wrote and no reply named goes too.
            self.storage.release(self.objects.object_ids(), held=self._held_objects)

    def _held_objects(self) -> set[str]:
        """The objects of the runs still active."""
        runs = [run for run in self._runs.values() if not run.ended]
        return set().union(*(run.objects for run in runs))

    async def shutdown(self) -> None:
        """Stop every ClientApp (they are told, then terminated, then killed) and wait."""
        self.end_runs(self.active_run_ids())
        if self._installs:
            await asyncio.gather(*self._installs, return_exceptions=True)
        await self.processes.shutdown()
        if self._ticking is not None:
            self._ticking.cancel()
            await asyncio.gather(self._ticking, return_exceptions=True)

    # --- from ClientAppIo --------------------------------------------------------------------

    async def next_message(
        self, run_id: int, wait: float
    ) -> tuple[common_pb2.Message | None, bool]:
        """The run's next message (waiting up to ``wait`` s) and whether the run has ended."""

        def look() -> tuple[common_pb2.Message | None, bool]:
            run = self.run(run_id)
            if run is None:
                return None, True
            if run.inbox:
                message = run.inbox.popleft()
                self._handed_off(run, message)
                return message, False
            return None, run.ended

        return await self._inboxes.long_poll(
            ("run", run_id), wait, look, clock=self._clock,
            ready=lambda found: found[0] is not None or found[1],
        )  # fmt: skip

    async def forward_reply(self, run_id: int, reply: common_pb2.Message) -> None:
        """Send a ClientApp's reply (and the objects it references) to the link."""
        run = self.run(run_id)
        if run is None or reply.reply_to_message_id not in run.received:
            raise PermissionError(
                f"reply {reply.message_id} answers no message this node received for run {run_id}"
            )
        # Sharing the directory, the ClientApp writes its objects there itself (and could read
        # every other one anyway); otherwise only what its run may read can be named.
        missing = self.objects.missing(reply.object_ids)
        if not self.share_objects:
            missing += [
                i
                for i in dict.fromkeys(reply.object_ids)
                if i not in run.objects and i not in missing
            ]
        if missing:
            raise PermissionError(
                f"reply {reply.message_id} references {len(missing)} object(s) its ClientApp "
                f"did not store, e.g. {missing[0][:16]}"
            )
        run.objects.update(reply.object_ids)
        reply.run_id = run_id
        object_ids = list(reply.object_ids)

        def send(session: Session) -> None:  # in a worker thread: touches no run
            reply.src_node_id = session.node_id
            try:
                try:
                    self._client.send_objects(session, self.objects, object_ids)
                finally:
                    release_free_memory()  # the chunks sent are not kept for the next reply
                self._client.push(session, [reply])
            except OverQuota as error:
                log.warning("run %d: the link refused reply %s (%s); sending an error reply "
                            "instead", run_id, reply.message_id, error)  # fmt: skip
                self._client.push(session, [refused_reply(reply, str(error))])
                raise

        try:
            await self._link.on_session(send)
        except OverQuota:
            run.received.discard(reply.reply_to_message_id)
            raise
        run.received.discard(reply.reply_to_message_id)

    async def ensure_object(self, run_id: int, object_id: str, *, verify: bool = False) -> None:
        """Make an object of run ``run_id`` available to its ClientApp, fetching it from the
        link if the node lacks it (within ``--max-object-storage``: QuotaExceeded). With
        ``verify`` (the node is about to serve it), a stored copy whose bytes do not match
        its id is deleted and fetched again. ValueError for an object outside the run's
        scope: the same "no object" whether or not the node stores it."""
        run = self.run(run_id)
        if run is None or check_object_id(object_id) not in run.objects:
            raise ValueError(f"no object {object_id[:80]}")
        if verify and self.objects.has(object_id):
            try:
                await asyncio.to_thread(self.objects.verify, object_id, discard=True)
            except CorruptObject:
                log.warning("run %d: object %s on this node's disk does not match its SHA-256: "
                            "deleted, fetching it again", run_id, object_id)  # fmt: skip
            except FileNotFoundError:
                pass  # deleted meanwhile (its run ended, or a reader found it corrupt)
        await self._link.on_session(
            lambda session: self._client.fetch_object(
                session,
                object_id,
                self.objects,
                reserve=self.storage.reserve,
                verify=False,  # its reader hashes it: the ClientApp, or this node when serving
            )
        )

    async def ensure_objects(self, run_id: int, object_ids: list[str]) -> None:
        """:meth:`ensure_object` for each (unverified: the ClientApp reads them from the shared
        directory and checks them itself), several at a time; the first error is raised once
        every fetch has ended."""
        slots = asyncio.Semaphore(PARALLEL_STREAMS)

        async def one(object_id: str) -> None:
            async with slots:
                await self.ensure_object(run_id, object_id)

        results = await asyncio.gather(
            *(one(object_id) for object_id in dict.fromkeys(object_ids)), return_exceptions=True
        )
        await asyncio.to_thread(release_free_memory)  # nor the chunks fetched
        for result in results:
            if isinstance(result, BaseException):
                raise result
