"""A run's ClientApp starts once, whoever asks, and one that started for a run that ended
meanwhile is asked to end: the node's runs on their event loop, with a fake spawner whose
process start takes several turns of the loop (as ``create_subprocess_exec`` does).

Two ask at once when a run's app environment finishes installing while the agent delivers
the run's next message: before, each launched a process, the two split the run's messages and
the first was never stopped with its run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from flwrmtls.errors import LinkUnreachable
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import common_pb2
from flwrmtls.runs.supervisor import AppProcess, Spawn, spawn_process
from flwrmtls.wire.errors import ConnectionContext

from ..runs.test_supervisor import FakeProcess


class SlowSpawner:
    """Processes that start only once ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[FakeProcess] = []

    async def __call__(self, command: list[str]) -> AppProcess:
        await self.gate.wait()
        process = FakeProcess(command)
        self.started.append(process)
        return process


def _node_apps(tmp_path: Path, spawn: Spawn = spawn_process) -> tuple[ClientApps, grpc.Channel]:
    """A node's runs with a link nothing listens at (calling it fails: LinkUnreachable)."""
    channel = grpc.insecure_channel("127.0.0.1:1")
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    apps = ClientApps(client, ObjectStore(tmp_path / "objects"), node_config={}, spawn=spawn)
    apps.processes.listen("127.0.0.1:9")
    return apps, channel


def _scenario(tmp_path: Path, ended_meanwhile: bool) -> tuple[int, bool]:
    """How many processes started for one run asked for twice at once, and whether the
    supervisor is ending the run's process."""

    async def main() -> tuple[int, bool]:
        spawn = SlowSpawner()
        apps, channel = _node_apps(tmp_path, spawn)
        run = apps.adopt(NodeRun(1, "0" * 64, {}))
        try:
            asking = [asyncio.create_task(apps._ensure_process(run)) for _ in range(2)]
            for _ in range(5):
                await asyncio.sleep(0)
            if ended_meanwhile:
                apps.end_runs([1])
            spawn.gate.set()
            await asyncio.gather(*asking)
            record = apps.processes.get(1)
            ending = record is not None and record.ending
            return len(spawn.started), ending
        finally:
            for process in spawn.started:
                process.exit(0)
            await apps.processes.shutdown()
            channel.close()

    return asyncio.run(main())


def test_a_runs_clientapp_starts_once_when_two_ask_for_it_at_once(tmp_path: Path) -> None:
    started, ending = _scenario(tmp_path, ended_meanwhile=False)
    assert started == 1
    assert not ending  # the control: a run still going keeps its process


def test_a_clientapp_started_for_a_run_that_ended_meanwhile_is_asked_to_end(
    tmp_path: Path,
) -> None:
    started, ending = _scenario(tmp_path, ended_meanwhile=True)
    assert started == 1
    assert ending


def test_a_run_that_ends_without_a_process_is_forgotten_at_once(tmp_path: Path) -> None:
    """A run that ended while its app environment was being prepared (or that could not run
    here) has no process whose exit would forget it: the node forgets it when it ends,
    instead of holding it until the node restarts; its id stays, so a late message of it is
    dropped as before. A run whose process is alive is kept until that process exits (the
    control)."""

    async def main() -> tuple[bool, bool, bool]:
        spawn = SlowSpawner()
        spawn.gate.set()
        apps, channel = _node_apps(tmp_path, spawn)
        apps.adopt(NodeRun(1, "0" * 64, {}, python=None))  # its environment being prepared
        running = apps.adopt(NodeRun(2, "1" * 64, {}))
        try:
            await apps._ensure_process(running)
            apps.end_runs([1, 2])
            forgotten = apps.run(1) is None
            # Its late message is still dropped here, without asking the link.
            assert not await apps.deliver(common_pb2.Message(message_id="late", run_id=1))
            kept_while_alive = apps.run(2) is not None
            spawn.started[0].exit(0)
            for _ in range(50):  # the supervisor hears of the exit on the loop
                if apps.run(2) is None:
                    break
                await asyncio.sleep(0.01)
            return forgotten, kept_while_alive, apps.run(2) is None
        finally:
            for process in spawn.started:
                process.exit(0)
            await apps.processes.shutdown()
            channel.close()

    forgotten, kept_while_alive, forgotten_on_exit = asyncio.run(main())
    assert forgotten
    assert kept_while_alive
    assert forgotten_on_exit


def test_a_forgotten_runs_id_is_asked_about_again_after_a_new_activation(
    tmp_path: Path,
) -> None:
    """A late message of a forgotten run is dropped without asking the link, until the node
    activates again: a link whose database was reset hands out run ids again, and a new
    run with an old id must reach its ClientApp (here: the link is asked, and is not there)."""

    async def main() -> None:
        apps, channel = _node_apps(tmp_path)  # nothing listens: asking the link fails
        apps.session = Session(7, "first", "CN=node", 10.0)
        apps.adopt(NodeRun(1, "0" * 64, {}, python=None))
        try:
            apps.end_runs([1])
            late = common_pb2.Message(message_id="late", run_id=1)
            assert not await apps.deliver(late)  # dropped here, the link not asked
            apps.session = Session(7, "second", "CN=node", 10.0)  # the node activated again
            with pytest.raises(LinkUnreachable):  # asked the link about run 1
                await apps.deliver(common_pb2.Message(message_id="new", run_id=1))
        finally:
            await apps.processes.shutdown()
            channel.close()

    asyncio.run(main())


def test_a_run_that_ends_while_its_process_fails_to_start_is_forgotten(tmp_path: Path) -> None:
    """The run ends while its ClientApp starts, and the start fails: nothing else would
    forget it (no process will exit)."""

    class FailingSpawner(SlowSpawner):
        async def __call__(self, command: list[str]) -> AppProcess:
            await self.gate.wait()
            raise OSError("cannot start python")

    async def main() -> bool:
        spawn = FailingSpawner()
        apps, channel = _node_apps(tmp_path, spawn)
        run = apps.adopt(NodeRun(1, "0" * 64, {}))
        try:
            starting = asyncio.create_task(apps._ensure_process(run))
            for _ in range(5):
                await asyncio.sleep(0)
            apps.end_runs([1])
            assert apps.run(1) is run  # its process is starting: kept for now
            spawn.gate.set()
            with pytest.raises(OSError, match="cannot start python"):
                await starting
            return apps.run(1) is None
        finally:
            await apps.processes.shutdown()
            channel.close()

    assert asyncio.run(main())
