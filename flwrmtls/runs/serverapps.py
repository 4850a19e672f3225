"""The link's runs: start a ServerApp process per run, capture its output, record how it ended.

Rules:

* StartRun checks the bundle (its SHA-256, that every member is an app file ``flwrmtls run``
  would bundle and holds no private key, its pyproject.toml) before anything runs; the run
  config is the app's defaults with the user's overrides (unknown keys refused).
* Each run gets one ServerApp process (``python -I -u -m flwrmtls.appio.serverapp_process``,
  started in ``/``, supervised by :mod:`flwrmtls.runs.supervisor`: spare, stop, kill, no
  zombies; nothing in the link's working directory is imported). Its token goes to it on
  standard input, never on its command line; the link keeps the token's hash only. Every
  line the process prints becomes a run log entry.
* How a run ends (see :mod:`flwrmtls.state.runlifecycle`): the process exits 0 -> completed; it
  reports a failure or exits non-zero -> failed with its reason; ``stop`` -> stopped (the
  process is terminated); the link stops -> failed ("link stopped"); a run found active when
  the link starts -> failed ("link restarted"). Ending a run ends its token, and nodes learn
  of it on their next pull.
* A run's app may need packages (its bundle's ``[project] dependencies``), judged at
  StartRun (:class:`~flwrmtls.runs.appenvs.AppEnvs`): a requirement refused, or (installing
  disabled) one the link lacks, refuses the StartRun in one line. Met by the link's own
  environment, the ServerApp runs with the link's interpreter. Otherwise StartRun answers at
  once and the run stays pending while its environment is prepared (off the event loop;
  installed once per set of requirements, reused by later runs), each line of progress in
  the run's log under ``link``; then its ServerApp starts with that environment's
  interpreter. An install that fails fails the run with pip's line; stopping the run, or the
  link, cancels it.
* One spare ServerApp process waits, its imports done, for the next run: StartRun hands it
  the run's token instead of starting a process (a third of a second of CPU here). The spare
  is started once the link has had no active run for ``SPARE_DELAY`` seconds
  (:mod:`flwrmtls.runs.supervisor`), so that it never competes with a run for the CPU, and
  it is stopped with the link.
* A ServerApp's result is kept only in the shape :mod:`flwrmtls.app.runresult` defines (the
  ServerAppIo servicer checks it); its stated reason is cut at ``REASON_LIMIT`` characters.
* The run's bundle is its first object (it counts against the run's quota). When a run ends,
  its messages are deleted, and so are its objects that no other run, pending node upload or
  upload in progress holds (see :mod:`flwrmtls.runs.linkobjects`). Its status, history, logs and
  result stay.
* Starting a run is one transaction (the run, its first history entry, its bundle's row, the
  first line of its log), written after the bundle's file. Ending a run is one transaction:
  its final status and history entry, its tokens gone, its messages gone, its object rows
  gone, the line that says how it ended; the files nothing else holds are deleted after the
  commit. A crash at any statement leaves either the run as it was (a restarted link then
  fails it) or ended whole, with at worst files that nothing names (the start-up sweep
  deletes them); never an ended run with a token, a message or an object row.
* Start-up (:meth:`ServerApps.recover`) is one transaction: the runs that were active fail,
  then whatever a run that is not active still has (left by an older link) is deleted.
* Several link processes on one database (:mod:`flwrmtls.state.replicas`): a run's ServerApp
  runs beside the process that accepted StartRun. At start-up only the runs of processes that
  are not alive fail ("link replica lost"), and every few seconds each process ends those of
  processes lost since (:meth:`ServerApps.end_lost_runs`). A run ended through another
  process (``flwrmtls stop`` reaching it) has its ServerApp stopped here when the
  announcement arrives (:meth:`ServerApps.ended_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field

from flwrmtls.app.bundle import bundle_hash, merge_run_config
from flwrmtls.app.bundling import check_bundle
from flwrmtls.auth.tokens import new_token, token_hash
from flwrmtls.clock import Clock
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value
from flwrmtls.runs.appenvs import AppEnvs, EnvError, EnvPlan
from flwrmtls.runs.linkobjects import LinkObjects
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.runlog import RunLog
from flwrmtls.runs.supervisor import AppSupervisor, Spawn, spawn_process
from flwrmtls.state.database import DatabaseError, error_reason
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.replicas import LOST_REASON
from flwrmtls.state.runlifecycle import IllegalTransition, RunStatus

__all__ = ["ServerApps"]

log = logging.getLogger("flwrmtls.runs.serverapps")

REASON_LIMIT = 4000
"""The most characters of a ServerApp's stated reason the run keeps."""


@dataclass
class _Reported:
    failed: bool
    reason: str


@dataclass
class _Output:
    """What a run's ServerApp printed, as its run log keeps it."""

    run_id: int
    run_log: RunLog
    last_line: str = ""
    lost_lines: int = field(default=0)

    def add(self, line: str) -> None:
        self.last_line = line[:1000]
        try:
            self.run_log.add(self.run_id, "serverapp", line)
        except DatabaseError as error:  # keep reading: a full pipe would stall it
            if not self.lost_lines:
                log.error(
                    "run %d: the link's database failed (%s): its log lines are dropped "
                    "until it works again", self.run_id, error,
                )  # fmt: skip
            self.lost_lines += 1


class ServerApps:
    def __init__(
        self,
        state: LinkState,
        clock: Clock,
        *,
        notifier: Notifier,
        run_log: RunLog,
        objects: LinkObjects,
        spawn: Spawn = spawn_process,
        envs: AppEnvs | None = None,
    ) -> None:
        """``envs``: where the runs' app environments are judged and built (None: ServerApps
        run with the link's interpreter, their requirements not looked at)."""
        self._envs = envs
        self._installs: dict[int, tuple[asyncio.Task[None], threading.Event]] = {}
        """Runs whose app environment is being prepared: the task, and its cancel event."""
        self._state = state
        self._clock = clock
        self._notifier = notifier
        self._run_log = run_log
        self._objects = objects
        self._reported: dict[int, _Reported] = {}
        self.processes = AppSupervisor(
            "flwrmtls.appio.serverapp_process", "--serverappio-api-address", clock,
            busy=lambda: bool(self._state.runs.active()), spawn=spawn, what="ServerApp",
        )  # fmt: skip
        self._ticking: asyncio.Task[None] | None = None

    def listen(self, serverappio_address: str) -> None:
        """ServerAppIo listens at ``serverappio_address``: runs may start, and a spare."""
        self.processes.listen(serverappio_address)
        self._ticking = asyncio.get_running_loop().create_task(self.processes.run())

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def recover(self) -> None:
        """At start-up, in one transaction: runs that were active when the link last stopped
        have failed, and no run that is not active keeps a token, a message or an object
        row. (The files follow: :meth:`LinkObjects.collect_unowned`.)"""
        with self._state.transaction():
            if self._state.shared:  # only the runs of link processes that are gone
                for run_id in self._state.replicas.orphaned_runs(now=self._now()):
                    self._end(run_id, RunStatus.FAILED, LOST_REASON)
            else:
                for run in self._state.runs.active():
                    self._end(
                        run.run_id, RunStatus.FAILED, "link restarted while the run was active"
                    )
            left = self._state.forget_inactive_runs()
        if any(left.values()):
            found = ", ".join(f"{count} {kind}" for kind, count in left.items() if count)
            log.warning("deleted what ended runs still had in the database: %s", found)

    async def start_run(
        self, bundle: bytes, declared_hash: str, overrides: dict[str, Value], owner: str
    ) -> int:
        actual = bundle_hash(bundle)
        if actual != declared_hash:
            raise InputError(f"bundle hash mismatch: declared {declared_hash}, got {actual}")
        # Every member is checked (app file types, no private key), off the event loop,
        # within size bounds; only pyproject.toml is parsed.
        app = await asyncio.to_thread(check_bundle, bundle)
        run_config = merge_run_config(app.default_config, overrides)
        plan = None  # InputError: refused (a requirement refused, missing, flwrmtls's own)
        if self._envs is not None:
            where = "the bundle's pyproject.toml"
            plan = await asyncio.to_thread(self._envs.plan, app.dependencies, where)
        self._objects.check_bundle(len(bundle))
        self._objects.store.put(bundle)  # before the rows that name it (see LinkObjects)
        with self._state.transaction():
            run_id = self._state.runs.create(
                app_name=app.name, app_version=app.version, bundle_hash=actual,
                run_config_json=json.dumps(run_config, sort_keys=True), owner=owner,
                now=self._now(),
            )  # fmt: skip
            self._objects.add_bundle(run_id, actual)
            self._run_log.add(
                run_id, "link", f"run {run_id}: {app.name} {app.version} started by {owner}"
            )
        if self._state.shared:
            log.info("run %d: its ServerApp runs beside this link (replica %s)", run_id,
                     self._state.replica_id)  # fmt: skip
        if plan is None or self._envs is None or self._envs.ready(plan):
            python = self._envs.python(plan) if plan is not None and self._envs else ""
            if plan is not None and plan.needs_env:
                self._run_log.add(run_id, "link", f"app dependencies: reusing environment "
                                                  f"{plan.label}")  # fmt: skip
            await self._launch(run_id, python)
        else:
            cancel = threading.Event()
            task = asyncio.create_task(self._install_then_launch(run_id, plan, cancel))
            self._installs[run_id] = (task, cancel)
        return run_id

    async def _install_then_launch(
        self, run_id: int, plan: EnvPlan, cancel: threading.Event
    ) -> None:
        """Prepare the run's app environment off the loop (its lines into the run's log),
        then start its ServerApp with it; a failure fails the run."""
        assert self._envs is not None
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:  # on pip's thread: the state is the loop's
            loop.call_soon_threadsafe(self._log_line, run_id, line)

        try:
            python = await asyncio.to_thread(self._envs.prepare, plan, progress, cancel)
        except (EnvError, OSError) as error:
            if not cancel.is_set():
                reason = f"installing the app's dependencies on the link failed: {error}"
                try:
                    self._end(run_id, RunStatus.FAILED, reason)
                except DatabaseError as failed:  # nobody awaits this task: say it here
                    log.error("run %d: %s; the link's database failed recording it (%s)",
                              run_id, reason, error_reason(failed))  # fmt: skip
            return
        finally:
            self._installs.pop(run_id, None)
        if cancel.is_set():
            return  # stopped, or the link stops, meanwhile
        await self._launch(run_id, python)

    def _log_line(self, run_id: int, line: str) -> None:
        try:
            self._run_log.add(run_id, "link", line)
        except DatabaseError as error:
            log.error("run %d: the link's database failed (%s): %s", run_id, error, line)

    def _cancel_install(self, run_id: int) -> asyncio.Task[None] | None:
        install = self._installs.get(run_id)
        if install is None:
            return None
        install[1].set()
        return install[0]

    async def _launch(self, run_id: int, python: str = "") -> None:
        """Start the run's ServerApp (with ``python``, by default the link's interpreter)."""
        token = new_token()
        self._state.runs.add_token(token_hash(token), run_id, "serverapp")
        try:
            process = await self.processes.launch(token, python)
        except OSError as error:
            self._end(run_id, RunStatus.FAILED, f"the ServerApp process could not start: {error}")
            return
        try:
            self._state.runs.transition(run_id, RunStatus.RUNNING, "", self._now())
        except IllegalTransition:  # stopped while its process started: its token is gone
            await self.processes.stop_process(process)
            return
        except DatabaseError:  # nobody would supervise it, and its run stays pending
            await self.processes.stop_process(process)
            raise
        output = _Output(run_id, self._run_log)
        self.processes.supervise(
            run_id, process, on_line=output.add,
            on_exit=lambda code: self._exited(run_id, code, output.last_line),
        )  # fmt: skip

    def _exited(self, run_id: int, code: int, last_line: str) -> None:
        """Run ``run_id``'s ServerApp exited with ``code``: end the run as the rules say."""
        reported = self._reported.pop(run_id, None)
        if reported is not None and reported.failed:
            status, reason = RunStatus.FAILED, reported.reason
        elif code == 0:
            status, reason = RunStatus.COMPLETED, reported.reason if reported else ""
        else:
            status = RunStatus.FAILED
            reason = f"the ServerApp exited with code {code}: {last_line}"
        try:
            self._end(run_id, status, reason)
        except DatabaseError as error:
            self._state.runs.suspend_tokens(run_id)  # its process is gone: so is its token
            log.error(
                "run %d ended (%s%s) but the link's database failed to record it (%s): its "
                "token no longer works; it shows as running until it is stopped or the "
                "link restarts, which marks it failed",
                run_id, status.value, f": {reason}" if reason else "", error,
            )  # fmt: skip

    def report(self, run_id: int, failed: bool, reason: str, result_json: str) -> None:
        """ServerAppIo: the ServerApp's own account of how its run went (``result_json``
        already checked by :func:`flwrmtls.app.runresult.check_result`)."""
        if result_json:
            self._state.runs.set_result(run_id, result_json)
        if len(reason) > REASON_LIMIT:
            reason = reason[:REASON_LIMIT] + "..."
        self._reported[run_id] = _Reported(failed, reason)

    def _end(self, run_id: int, status: RunStatus, reason: str) -> None:
        """End the run in one transaction (see the module's rules); nothing if it has ended
        already (e.g. stopped, then its process exited)."""
        text = f"run {run_id} {status.value}" + (f": {reason}" if reason else "")
        try:
            with self._state.transaction():
                self._state.runs.transition(run_id, status, reason, self._now())  # + tokens
                self._state.messages.delete_run(run_id)
                self._objects.release_run(run_id)  # rows now, files after the commit
                self._run_log.add(run_id, "link", text)
                self._state.transaction.after_commit(lambda: self._ended(run_id, text))
        except IllegalTransition:
            return

    def _ended(self, run_id: int, text: str) -> None:
        """After a run's end has committed: say so, and wake who waits for it."""
        log.info(text)
        self._notifier.notify(("run", run_id))
        for node_id, _ in self._state.online_nodes(now=self._now()):
            self._notifier.notify(("node", node_id))

    def end_lost_runs(self) -> None:
        """Several links: in one transaction, the active runs of link processes whose lease
        passed end failed ("link replica lost"), and those processes are forgotten."""
        now = self._now()
        with self._state.transaction():
            lost = self._state.replicas.lost(now=now)
            for run_id in self._state.replicas.orphaned_runs(now=now):
                log.warning("run %d: the link process running its ServerApp is lost", run_id)
                self._end(run_id, RunStatus.FAILED, LOST_REASON)
            self._state.replicas.forget(lost)

    def ended_elsewhere(self, run_id: int) -> None:
        """Several links: another link process ended the run; its ServerApp stops here."""
        if self.processes.get(run_id) is not None:
            asyncio.get_running_loop().create_task(self.processes.stop(run_id))

    def check_ended(self) -> None:
        """Several links, after announcements may have been missed: stop the ServerApps of
        runs that ended elsewhere."""
        for run_id in self.processes.running():
            run = self._state.runs.get(run_id)
            if run is None or run.ended:
                self._state.runs.forget_ended(run_id)
                self.ended_elsewhere(run_id)

    async def stop_run(self, run_id: int, reason: str) -> RunStatus:
        """Control: stop a run (its process is terminated). Raises KeyError, IllegalTransition."""
        run = self._state.runs.get(run_id)
        if run is None:
            raise KeyError(run_id)
        if run.ended:
            return run.status
        self._end(run_id, RunStatus.STOPPED, reason)
        install = self._cancel_install(run_id)
        if install is not None:
            await install
        await self.processes.stop(run_id)
        return RunStatus.STOPPED

    def _end_on_stop(self, run_id: int) -> None:
        """The link stops: the run fails ("link stopped"). If its database cannot record that
        (a full or failing disk), the run's process stops all the same: the next start finds
        the run active and marks it failed ("link restarted")."""
        try:
            self._end(run_id, RunStatus.FAILED, "link stopped")
        except DatabaseError as error:
            self._state.runs.suspend_tokens(run_id)
            log.error(
                "run %d: the link's database failed (%s) recording that the link stopped; its "
                "ServerApp is stopped all the same, and the next start marks the run failed",
                run_id, error_reason(error),
            )  # fmt: skip

    async def shutdown(self) -> None:
        """The link is stopping: its runs fail and their processes stop (the spare too);
        the app environments being prepared are cancelled."""
        for run_id in list(self._installs):
            self._end_on_stop(run_id)
            install = self._cancel_install(run_id)
            if install is not None:
                await install
        await self.processes.shutdown(before_each=self._end_on_stop)
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
