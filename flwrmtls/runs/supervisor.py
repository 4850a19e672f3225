"""How the link and the node run app processes (a ServerApp's, a ClientApp's): one supervisor.

Rules:

* An app process starts isolated (:func:`app_process_command`): ``python -I`` (no current
  or script directory on ``sys.path``, no ``PYTHON*`` variables, no user site-packages) and
  ``-u`` (its output reaches its owner line by line), in the working directory ``/``
  (:data:`APP_PROCESS_CWD`). A ``grpc.py`` left in the link's or node's working directory is
  never imported. What it does once it has its run is :mod:`flwrmtls.appio.process`.
* It runs with the interpreter of its run's app environment when its app's requirements
  needed one (:mod:`flwrmtls.runs.appenvs`), else with the link's or node's own.
* The run token goes to it on standard input, never on its command line or in its
  environment (:meth:`AppSupervisor.launch`).
* One spare process waits, its imports done, for the next run: ``launch`` hands it the token
  instead of starting a process (a third to a half of a second of CPU). It is started once
  the owner has had no active run, and this supervisor no process that is not ending, for
  :data:`SPARE_DELAY` seconds, so that it never competes with a run for the CPU. A spare
  holds no token until it is given one; one that died while waiting is replaced.
* A process is stopped in steps (:func:`stop_step`): asked to end (its run ended, and its
  owner told it so) it has ``exit_grace`` seconds to exit by itself; then it is terminated;
  :data:`STOP_GRACE` seconds later, killed. :meth:`AppSupervisor.stop` terminates at once
  and waits for the exit.
* Every process is waited for (no zombies): its output is read line by line (a line longer
  than :data:`LINE_LIMIT` is split) and handed to its owner until it closes, then its exit
  code; :meth:`AppSupervisor.shutdown` stops them all, the spare too.
* Time is the injected clock's: :meth:`AppSupervisor.tick` makes every decision above, and
  :meth:`AppSupervisor.run` calls it every :data:`TICK` seconds. How a process starts is
  injected too (:data:`Spawn`), so the decisions are tested with a fake clock and fake
  processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from flwrmtls.clock import Clock

__all__ = [
    "APP_PROCESS_CWD",
    "LINE_LIMIT",
    "SPARE_DELAY",
    "STOP_GRACE",
    "TICK",
    "AppProcess",
    "AppSupervisor",
    "OutputPipe",
    "Spawn",
    "StopStep",
    "Supervised",
    "TokenPipe",
    "app_process_command",
    "spawn_process",
    "stop_step",
]

log = logging.getLogger("flwrmtls.runs.supervisor")

APP_PROCESS_CWD = "/"
"""Where an app process starts: a directory nobody else can write, before it has a run."""
SPARE_DELAY = 1.0
"""Seconds without an active run before a spare app process is started."""
STOP_GRACE = 5.0
"""Seconds between terminating a process and killing it."""
TICK = 0.5
"""Seconds between two looks at the processes (:meth:`AppSupervisor.run`)."""
LINE_LIMIT = 1 << 20
"""The longest output line handed on whole; longer ones are split."""


def app_process_command(module: str, *args: str, python: str = "") -> list[str]:
    """The command line that starts the app process ``module`` isolated (see the rules), with
    ``python``: the interpreter of the run's app environment (:mod:`flwrmtls.runs.appenvs`),
    by default the one running here."""
    return [python or sys.executable, "-I", "-u", "-m", module, *args]


class TokenPipe(Protocol):
    """A process's standard input, as the token is written to it."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class OutputPipe(Protocol):
    """A process's standard output, as it is read."""

    async def readline(self) -> bytes: ...
    async def read(self, n: int = -1) -> bytes: ...


class AppProcess(Protocol):
    """What the supervisor needs of a process (:class:`asyncio.subprocess.Process` is one)."""

    @property
    def stdin(self) -> TokenPipe | None: ...
    @property
    def stdout(self) -> OutputPipe | None: ...
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int: ...


Spawn = Callable[[list[str]], Awaitable[AppProcess]]
"""Start a process running ``command`` (its standard input and output piped)."""


async def spawn_process(command: list[str]) -> AppProcess:
    """An app process, started in :data:`APP_PROCESS_CWD`, stderr joined to its stdout."""
    return await asyncio.create_subprocess_exec(
        *command, cwd=APP_PROCESS_CWD,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, limit=LINE_LIMIT,
    )  # fmt: skip


class StopStep(enum.Enum):
    WAIT = "wait"
    TERMINATE = "terminate"
    KILL = "kill"


def stop_step(
    now: float,
    *,
    asked_at: float | None,
    terminated_at: float | None,
    killed: bool,
    exit_grace: float,
) -> StopStep:
    """What to do now with a process asked to end at ``asked_at`` (None: it was not)."""
    if asked_at is None or killed:
        return StopStep.WAIT
    if terminated_at is None:
        return StopStep.TERMINATE if now - asked_at >= exit_grace else StopStep.WAIT
    return StopStep.KILL if now - terminated_at >= STOP_GRACE else StopStep.WAIT


@dataclass(eq=False)
class Supervised:
    """A process given a run, read until it exits."""

    key: int
    """The run it serves."""
    process: AppProcess
    done: asyncio.Task[int]
    """Reads its output, then waits for it: the exit code."""
    asked_at: float | None = None
    terminated_at: float | None = None
    killed: bool = False

    @property
    def ending(self) -> bool:
        return self.asked_at is not None


class AppSupervisor:
    """The app processes of the link (ServerApps) or of a node (ClientApps); see the rules."""

    def __init__(
        self,
        module: str,
        address_flag: str,
        clock: Clock,
        *,
        busy: Callable[[], bool] = lambda: False,
        spawn: Spawn = spawn_process,
        exit_grace: float = 0.0,
        what: str = "app",
    ) -> None:
        """``module`` with ``address_flag`` :attr:`address` is the process's command line;
        ``busy``: whether the owner has an active run (no spare is started then)."""
        self._module = module
        self._address_flag = address_flag
        self._clock = clock
        self._busy = busy
        self._spawn = spawn
        self._exit_grace = exit_grace
        self._what = what
        self.address = ""
        """The API the processes call (:meth:`listen`); no process starts before it is set."""
        self._supervised: dict[int, Supervised] = {}
        self._spare: AppProcess | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._reaping: set[asyncio.Task[int]] = set()
        self._idle_since: float | None = clock.monotonic()
        self._stopping = False

    def listen(self, address: str) -> None:
        """The processes' API listens at ``address`` now: processes may start (a spare once
        :data:`SPARE_DELAY` has passed without a run)."""
        self.address = address
        self._idle_since = self._clock.monotonic()

    def _command(self, python: str = "") -> list[str]:
        if not self.address:
            raise OSError(f"no {self._what} process can start: its API is not listening yet")
        return app_process_command(self._module, self._address_flag, self.address, python=python)

    # --- a run's process ---------------------------------------------------------------------

    async def launch(self, token: str, python: str = "") -> AppProcess:
        """A process holding ``token``, of ``python`` (the run's app environment's interpreter;
        by default this process's own): the spare, which is of this process's interpreter, or a
        new one if there is none (or it died, or the run needs another interpreter). OSError
        when no process could be started or it exited at once."""
        self._idle_since = None
        own = python in ("", sys.executable)
        spare, self._spare = (self._spare, None) if own else (None, self._spare)
        if spare is not None:
            if await self._give(spare, token):
                return spare
            log.warning("the spare %s process had exited with %s", self._what, spare.returncode)
            self._reap(spare)
        process = await self._spawn(self._command(python))
        if not await self._give(process, token):
            self._reap(process)
            raise OSError(f"the {self._what} process exited at once")
        return process

    @staticmethod
    async def _give(process: AppProcess, token: str) -> bool:
        """Write the run token to the process's standard input; False if it has gone."""
        if process.returncode is not None or process.stdin is None:
            return False
        try:
            process.stdin.write(token.encode() + b"\n")
            await process.stdin.drain()
            process.stdin.close()
        except (OSError, RuntimeError):  # a closed pipe, or a transport already closed
            return False
        return True

    def supervise(
        self,
        key: int,
        process: AppProcess,
        *,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None] = lambda code: None,
    ) -> Supervised:
        """Read ``process`` (run ``key``'s) until it exits: each line of its output to
        ``on_line``, then its exit code to ``on_exit``."""
        done = asyncio.create_task(self._follow(key, process, on_line, on_exit))
        record = Supervised(key, process, done)
        self._supervised[key] = record
        return record

    async def _follow(
        self,
        key: int,
        process: AppProcess,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
    ) -> int:
        try:
            if process.stdout is not None:
                while True:
                    try:
                        raw = await process.stdout.readline()
                    except ValueError:  # a line longer than the limit: keep its start
                        raw = await process.stdout.read(LINE_LIMIT)
                    if not raw:
                        break
                    line = raw.decode("utf-8", "replace").rstrip()
                    if line:
                        on_line(line)
        finally:
            code = await process.wait()
            record = self._supervised.get(key)
            if record is not None and record.process is process:
                del self._supervised[key]
        on_exit(code)
        return code

    def get(self, key: int) -> Supervised | None:
        return self._supervised.get(key)

    def running(self) -> list[int]:
        """The runs that have a process here (until its exit has been read)."""
        return list(self._supervised)

    def alive(self, key: int) -> bool:
        """Whether run ``key`` has a process that has not exited."""
        record = self._supervised.get(key)
        return record is not None and record.process.returncode is None

    def end(self, key: int) -> None:
        """Run ``key`` ended and its process was told: it has ``exit_grace`` s to exit."""
        record = self._supervised.get(key)
        if record is not None and record.asked_at is None:
            record.asked_at = self._clock.monotonic()

    async def stop(self, key: int) -> None:
        """Terminate run ``key``'s process now (killed :data:`STOP_GRACE` s later) and wait
        until it has exited and its output has been read."""
        record = self._supervised.get(key)
        if record is not None:
            await self._stop(record)

    async def _stop(self, record: Supervised) -> None:
        now = self._clock.monotonic()
        record.asked_at = record.asked_at if record.asked_at is not None else now
        if record.terminated_at is None:
            self._terminate(record, now)
        while not record.done.done():
            self._escalate(record, self._clock.monotonic())
            await asyncio.wait({record.done}, timeout=TICK)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await record.done

    async def stop_process(self, process: AppProcess) -> None:
        """Stop a process no run holds (terminate; kill :data:`STOP_GRACE` s later) and
        wait for it."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            started = self._clock.monotonic()
            waiting = asyncio.ensure_future(process.wait())
            while not waiting.done():
                if self._clock.monotonic() - started >= STOP_GRACE:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                await asyncio.wait({waiting}, timeout=TICK)
        await process.wait()

    @staticmethod
    def _terminate(record: Supervised, now: float) -> None:
        record.terminated_at = now
        if record.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                record.process.terminate()

    def _escalate(self, record: Supervised, now: float) -> None:
        step = stop_step(
            now, asked_at=record.asked_at, terminated_at=record.terminated_at,
            killed=record.killed, exit_grace=self._exit_grace,
        )  # fmt: skip
        if step is StopStep.TERMINATE:
            log.info("run %d: terminating its %s process %d", record.key, self._what,
                     record.process.pid)  # fmt: skip
            self._terminate(record, now)
        elif step is StopStep.KILL:
            record.killed = True
            if record.process.returncode is None:
                log.warning("run %d: killing its %s process %d", record.key, self._what,
                            record.process.pid)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    record.process.kill()

    # --- time ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Escalate the stops that are due, and start a spare when one is due."""
        now = self._clock.monotonic()
        for record in list(self._supervised.values()):
            self._escalate(record, now)
        if self._stopping or not self.address:
            return
        if any(not record.ending for record in self._supervised.values()):
            self._idle_since = None  # a run's process is at work
            return
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < SPARE_DELAY:
            return
        if self._spare_task is not None and not self._spare_task.done():
            return
        spare = self._spare
        if spare is not None and spare.returncode is None:
            return
        if self._busy():  # a run is active without a process here (yet): look again later
            self._idle_since = now
            return
        if spare is not None:
            log.warning("the spare %s process exited with %s", self._what, spare.returncode)
            self._spare = None
            self._reap(spare)
        self._spare_task = asyncio.create_task(self._start_spare())

    async def _start_spare(self) -> None:
        try:
            spare = await self._spawn(self._command())
        except OSError as error:
            log.warning("could not start a spare %s process: %s", self._what, error)
            return
        if self._stopping or self._idle_since is None:  # a run began (or shutdown) meanwhile
            await self.stop_process(spare)
            return
        self._spare = spare

    async def run(self) -> None:
        """Tick every :data:`TICK` seconds until cancelled."""
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick()
            except Exception:  # never stop supervising: the next tick may succeed
                log.exception("supervising the %s processes failed; trying again", self._what)

    def _reap(self, process: AppProcess) -> None:
        """Wait for a process nobody reads (no zombie)."""
        task = asyncio.ensure_future(process.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def shutdown(self, before_each: Callable[[int], None] = lambda key: None) -> None:
        """Stop every process (``before_each`` told of each run first) and the spare."""
        self._stopping = True
        if self._spare_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._spare_task
        spare, self._spare = self._spare, None
        if spare is not None:
            await self.stop_process(spare)
        for key in list(self._supervised):
            before_each(key)
            await self.stop(key)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
