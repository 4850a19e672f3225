"""The app-process supervisor on its own: fake processes, a fake spawner and the fake clock.

Real ServerApp and ClientApp processes under it are tests/e2e/test_runs.py's (the spare
kept by an idle link and node, no zombies, everything stopped with them) and
tests/e2e/test_app_processes.py's; here each rule of flwrmtls.runs.supervisor, decided on
the fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from flwrmtls.runs.supervisor import (
    SPARE_DELAY,
    STOP_GRACE,
    AppProcess,
    AppSupervisor,
    StopStep,
    app_process_command,
    stop_step,
)
from flwrmtls.testing.clock import FakeClock

_PIDS = itertools.count(100)


class FakePipe:
    """Standard input: what was written, whether it was closed; broken when the process died."""

    def __init__(self, process: FakeProcess) -> None:
        self.process = process
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.process.returncode is not None:
            raise BrokenPipeError("the process has exited")
        self.written += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeProcess:
    """A process that prints what the test feeds it and exits when told, or on a signal it
    obeys (``ignores_terminate``: only a kill ends it)."""

    def __init__(self, command: list[str], *, ignores_terminate: bool = False) -> None:
        self.command = command
        self.pid = next(_PIDS)
        self.returncode: int | None = None
        self.ignores_terminate = ignores_terminate
        self.signals: list[str] = []
        self.stdin = FakePipe(self)
        self.stdout = asyncio.StreamReader()
        self._exited = asyncio.Event()

    @property
    def token(self) -> str:
        return self.stdin.written.decode().strip()

    def print(self, line: str) -> None:
        self.stdout.feed_data(line.encode() + b"\n")

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self.stdout.feed_eof()
            self._exited.set()

    def terminate(self) -> None:
        self.signals.append("terminate")
        if not self.ignores_terminate:
            self.exit(-15)

    def kill(self) -> None:
        self.signals.append("kill")
        self.exit(-9)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class FakeSpawner:
    def __init__(self) -> None:
        self.started: list[FakeProcess] = []
        self.ignores_terminate = False
        self.refuse: OSError | None = None

    async def __call__(self, command: list[str]) -> AppProcess:
        if self.refuse is not None:
            raise self.refuse
        process = FakeProcess(command, ignores_terminate=self.ignores_terminate)
        self.started.append(process)
        return process


class World:
    def __init__(self, *, busy: bool = False, exit_grace: float = 0.0) -> None:
        self.clock = FakeClock()
        self.spawn = FakeSpawner()
        self.busy = busy
        self.apps = AppSupervisor(
            "flwrmtls.appio.clientapp_process", "--clientappio-api-address", self.clock,
            busy=lambda: self.busy, spawn=self.spawn, exit_grace=exit_grace, what="ClientApp",
        )  # fmt: skip
        self.apps.listen("127.0.0.1:9094")
        self.lines: list[tuple[int, str]] = []
        self.exits: list[tuple[int, int]] = []

    async def run(self, key: int, token: str) -> FakeProcess:
        process = await self.apps.launch(token)
        assert isinstance(process, FakeProcess)
        self.apps.supervise(
            key, process, on_line=lambda line: self.lines.append((key, line)),
            on_exit=lambda code: self.exits.append((key, code)),
        )  # fmt: skip
        return process

    async def later(self, seconds: float) -> None:
        """``seconds`` pass on the fake clock; the supervisor looks, and its tasks run."""
        self.clock.advance(seconds)
        self.apps.tick()
        for _ in range(5):
            await asyncio.sleep(0)


def scenario(test: Callable[[World], Awaitable[None]], **world: object) -> None:
    async def main() -> None:
        w = World(**world)  # type: ignore[arg-type]
        try:
            await test(w)
        finally:  # time passes while it stops what is left (a stubborn process is killed)
            stopping = asyncio.create_task(w.apps.shutdown())
            while not stopping.done():
                await w.later(STOP_GRACE)
            await stopping

    asyncio.run(main())


def test_a_process_starts_isolated_its_token_on_standard_input_only() -> None:
    async def test(w: World) -> None:
        process = await w.run(1, "secret-token")
        assert process.command == app_process_command(
            "flwrmtls.appio.clientapp_process", "--clientappio-api-address", "127.0.0.1:9094"
        )
        assert process.command[1:4] == ["-I", "-u", "-m"]
        assert "secret-token" not in " ".join(process.command)
        assert process.token == "secret-token"
        assert process.stdin.closed
        process.print("hello")
        process.print("")  # blank lines are not handed on
        process.print("world")
        process.exit(0)
        await w.later(0)
        assert w.lines == [(1, "hello"), (1, "world")]
        assert w.exits == [(1, 0)]
        assert not w.apps.alive(1)

    scenario(test)


def test_no_process_before_its_api_listens() -> None:
    async def test(w: World) -> None:
        quiet = AppSupervisor("m", "--a", w.clock, spawn=w.spawn)
        with pytest.raises(OSError, match="not listening yet"):
            await quiet.launch("t")
        await w.later(SPARE_DELAY * 3)
        quiet.tick()
        assert [p for p in w.spawn.started if p.command[-1] == ""] == []

    scenario(test)


def test_a_spare_waits_after_the_delay_without_a_run_and_takes_the_next_run() -> None:
    async def test(w: World) -> None:
        await w.later(SPARE_DELAY / 2)
        assert w.spawn.started == []  # not yet
        await w.later(SPARE_DELAY / 2)
        [spare] = w.spawn.started
        assert spare.token == ""  # a spare holds no token
        await w.later(SPARE_DELAY * 5)
        assert len(w.spawn.started) == 1  # one spare, not one per tick
        process = await w.run(1, "run-1")
        assert process is spare
        assert spare.token == "run-1"
        await w.later(SPARE_DELAY * 5)
        assert len(w.spawn.started) == 1  # no spare while a run's process works
        spare.exit(0)
        await w.later(0)  # its exit is read
        await w.later(0)  # idle from now
        await w.later(SPARE_DELAY - 0.1)
        assert len(w.spawn.started) == 1
        await w.later(0.1)
        assert len(w.spawn.started) == 2  # idle again: the next spare

    scenario(test)


def test_no_spare_while_the_owner_has_an_active_run() -> None:
    async def test(w: World) -> None:
        await w.later(SPARE_DELAY * 3)
        assert w.spawn.started == []
        w.busy = False  # the control
        await w.later(SPARE_DELAY)
        assert len(w.spawn.started) == 1

    scenario(test, busy=True)


def test_a_spare_that_died_is_replaced_and_never_given_a_token() -> None:
    async def test(w: World) -> None:
        await w.later(SPARE_DELAY)
        [spare] = w.spawn.started
        spare.exit(1)
        process = await w.run(1, "run-1")
        assert process is not spare
        assert spare.token == ""
        assert process.token == "run-1"

    scenario(test)


def test_a_process_that_cannot_start_or_exits_at_once_is_an_error() -> None:
    async def test(w: World) -> None:
        w.spawn.refuse = OSError("no such interpreter")
        with pytest.raises(OSError, match="no such interpreter"):
            await w.apps.launch("t")
        w.spawn.refuse = None
        original = w.spawn.__call__

        async def dead(command: list[str]) -> AppProcess:
            process = await original(command)
            assert isinstance(process, FakeProcess)
            process.exit(1)
            return process

        w.apps._spawn = dead
        with pytest.raises(OSError, match="exited at once"):
            await w.apps.launch("t")

    scenario(test)


def test_an_ended_run_gets_its_grace_then_terminate_then_kill() -> None:
    async def test(w: World) -> None:
        w.spawn.ignores_terminate = True
        process = await w.run(1, "run-1")
        w.spawn.ignores_terminate = False  # the spare started later obeys
        w.apps.end(1)  # its run ended; the process was told
        await w.later(4.9)
        assert process.signals == []  # it may still exit by itself
        await w.later(0.1)
        assert process.signals == ["terminate"]
        await w.later(STOP_GRACE - 0.1)
        assert process.signals == ["terminate"]
        await w.later(0.1)
        assert process.signals == ["terminate", "kill"]
        await w.later(0)
        assert w.exits == [(1, -9)]
        await w.later(STOP_GRACE * 2)
        assert process.signals == ["terminate", "kill"]  # once

    scenario(test, exit_grace=5.0)


def test_stop_terminates_at_once_and_waits_for_the_exit() -> None:
    async def test(w: World) -> None:
        obeys = await w.run(1, "run-1")
        await w.apps.stop(1)
        assert obeys.signals == ["terminate"]
        assert w.exits == [(1, -15)]
        w.spawn.ignores_terminate = True
        stubborn = await w.run(2, "run-2")
        w.spawn.ignores_terminate = False
        stopping = asyncio.create_task(w.apps.stop(2))
        await asyncio.sleep(0)  # terminated now
        assert stubborn.signals == ["terminate"]
        await w.later(STOP_GRACE - 0.5)
        assert not stopping.done()
        await w.later(0.5)
        await asyncio.wait_for(stopping, 5)
        assert stubborn.signals == ["terminate", "kill"]
        assert w.exits[-1] == (2, -9)

    scenario(test)


def test_shutdown_stops_every_process_and_the_spare() -> None:
    async def test(w: World) -> None:
        first = await w.run(1, "run-1")
        second = await w.run(2, "run-2")
        told: list[int] = []
        await w.apps.shutdown(before_each=told.append)
        assert sorted(told) == [1, 2]
        assert first.returncode is not None
        assert second.returncode is not None
        await w.later(SPARE_DELAY * 3)
        assert len(w.spawn.started) == 2  # no spare once stopping

    scenario(test)


def test_the_stop_steps() -> None:
    def step(now: float, asked: float | None, terminated: float | None = None) -> StopStep:
        return stop_step(now, asked_at=asked, terminated_at=terminated, killed=False,
                         exit_grace=5.0)  # fmt: skip

    assert step(100.0, None) is StopStep.WAIT
    assert step(104.9, 100.0) is StopStep.WAIT
    assert step(105.0, 100.0) is StopStep.TERMINATE
    assert step(109.9, 100.0, 105.0) is StopStep.WAIT
    assert step(110.0, 100.0, 105.0) is StopStep.KILL
    assert stop_step(200.0, asked_at=1.0, terminated_at=2.0, killed=True, exit_grace=0) is (
        StopStep.WAIT
    )
