"""Simulated nodes for the scale benchmark: many nodes in a few worker processes.

Rules: each simulated node has its own grpc.aio channel (its own TCP + TLS connection, its own
subchannel pool) and its own certificate, and does on the Fleet API what a real node does
(flwrmtls.node.agent): ActivateNode (retried on UNAVAILABLE as a node retries), Heartbeat at
the link's interval, the long poll, and on a message GetRun, the bundle, the message's
objects, a reply built with flwrmtls's own message code (the message's arrays plus the node's
index: each reply differs), PushMessages. Worker processes are driven over pipes and stop
when told or when their pipe closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

from flwrmtls import __version__ as flwrmtls_version
from flwrmtls.app.message import message_from_proto, message_to_proto
from flwrmtls.app.records import ArrayRecord, MetricRecord, RecordDict
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import FleetClient
from flwrmtls.objects.store import CHUNK_SIZE, object_id_of
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.errors import ConnectionContext
from harness import BenchError

DEFAULT_WORKERS = 16
"""Worker processes for 1,000 simulated nodes by default: about 60 grpc.aio channels each. With
250 channels a worker is itself the bottleneck: measured here (bench_several_links, 556 nodes
on one link, 2 cores), the simulated nodes' heartbeat p50 was 392 ms with 4 workers and 43 ms
with 16, while a probe node on its own channel saw 3.5 ms both times. More workers cost memory,
not CPU: the figures must be the link's, not the load generator's."""
PULL_WAIT = 20.0
"""Seconds a simulated node's long poll waits, as a real node's (flwrmtls.node.agent)."""
ACTIVATE_ATTEMPTS = 6
SIM_NODE_PREFIX = "sim-"


@dataclass
class WorkerStats:
    activated: list[float] = field(default_factory=list)
    """time.monotonic() when each node's ActivateNode returned."""
    activation_retries: int = 0
    heartbeats: list[tuple[float, float, bool]] = field(default_factory=list)
    """(sent at, seconds, succeeded) per heartbeat."""
    handled: list[tuple[float, float]] = field(default_factory=list)
    """(the long poll returned the message, the reply was pushed) per message."""
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def error(self, where: str, error: BaseException) -> None:
        code = (
            error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
        )
        key = f"{where}: {code}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{key}: {error}"[:500])


class SimNode:
    """One simulated node: its own channel (own TCP + TLS connection, own certificate) and
    on the Fleet API the calls a real node makes (flwrmtls.node.agent, .apps, .fleet.client)."""

    def __init__(self, index: int, address: str, credentials: grpc.ChannelCredentials) -> None:
        self.index = index
        self.channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                # a subchannel pool of its own: never a connection shared with another node
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.node_id = 0
        self.session_id = ""
        self.interval = 10.0
        self.runs: set[int] = set()
        """Runs this node works for (a real node has a ClientApp process for each)."""

    async def activate(self, stats: WorkerStats) -> None:
        """ActivateNode, retried on UNAVAILABLE as a real node retries (1 s, doubling)."""
        for attempt in range(1, ACTIVATE_ATTEMPTS + 1):
            try:
                response = await self.stub.ActivateNode(
                    fleet_pb2.ActivateNodeRequest(node_version=flwrmtls_version), timeout=60
                )
            except grpc.aio.AioRpcError as error:
                retry = error.code() in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
                )  # fmt: skip
                if not retry or attempt == ACTIVATE_ATTEMPTS:
                    raise
                stats.activation_retries += 1
                await asyncio.sleep(min(30.0, 2.0 ** (attempt - 1)))
                continue
            self.node_id, self.session_id = response.node_id, response.session_id
            self.interval = response.heartbeat_interval or self.interval
            stats.activated.append(time.monotonic())
            return

    async def heartbeats(self, stats: WorkerStats) -> None:
        """A Heartbeat every interval the link asked for, as the node's heartbeat thread."""
        while True:
            await asyncio.sleep(self.interval)
            start = time.monotonic()
            ok = True
            try:
                response = await self.stub.Heartbeat(
                    fleet_pb2.HeartbeatRequest(session_id=self.session_id), timeout=10
                )
                self.interval = response.heartbeat_interval or self.interval
            except grpc.aio.AioRpcError as error:
                ok = False
                stats.error("Heartbeat", error)
            stats.heartbeats.append((start, time.monotonic() - start, ok))

    async def work(self, stats: WorkerStats) -> None:
        """Long-poll PullMessages; answer each message; forget runs the link says ended."""
        while True:
            try:
                response = await self.stub.PullMessages(
                    fleet_pb2.PullMessagesRequest(
                        session_id=self.session_id, wait_seconds=PULL_WAIT,
                        active_run_ids=sorted(self.runs),
                    ),
                    timeout=PULL_WAIT + 10,
                )  # fmt: skip
            except grpc.aio.AioRpcError as error:
                stats.error("PullMessages", error)
                await asyncio.sleep(1.0)
                continue
            self.runs.difference_update(response.ended_run_ids)
            for message in response.messages:
                received = time.monotonic()
                try:
                    await self.answer(message)
                except (grpc.aio.AioRpcError, ValueError, KeyError) as error:
                    stats.error("answer", error)
                    continue
                stats.handled.append((received, time.monotonic()))

    async def pull_object(self, object_id: str) -> bytes:
        """PullObject into memory and verify it (as transfer.pull_object_bytes does)."""
        buffer = bytearray()
        async for chunk in self.stub.PullObject(
            objects_pb2.PullObjectRequest(object_id=object_id, session_id=self.session_id),
            timeout=600,
        ):
            if chunk.offset != len(buffer):
                raise ValueError(f"object {object_id}: chunk at {chunk.offset}")
            buffer += chunk.data
        data = bytes(buffer)
        if object_id_of(data) != object_id:
            raise ValueError(f"object {object_id}: bytes do not match their SHA-256")
        return data

    async def answer(self, proto: common_pb2.Message) -> None:
        """What the node and its ClientApp do with a message: the run's bundle on its first
        message, the message's objects, the reply (built with flwrmtls' message code), its
        objects (those the link lacks), PushMessages."""
        if proto.run_id not in self.runs:
            run = await self.stub.GetRun(
                fleet_pb2.GetRunRequest(session_id=self.session_id, run_id=proto.run_id),
                timeout=30,
            )
            await self.pull_object(run.bundle_hash)
            self.runs.add(proto.run_id)
        objects = {oid: await self.pull_object(oid) for oid in dict.fromkeys(proto.object_ids)}
        message = message_from_proto(proto, objects)
        record = message.content["arrays"]
        assert isinstance(record, ArrayRecord)
        weights = record["weights"]
        reply = message.create_reply(
            RecordDict(
                {
                    "arrays": ArrayRecord({"weights": weights + np.float32(self.index)}),
                    "metrics": MetricRecord({"index": self.index}),
                }
            )
        )
        reply_proto, reply_objects = message_to_proto(reply)
        if reply_objects:
            missing = await self.stub.MissingObjects(
                objects_pb2.MissingObjectsRequest(
                    object_ids=list(reply_objects), session_id=self.session_id
                ),
                timeout=30,
            )
            for object_id in missing.object_ids:
                await self.stub.PushObject(
                    _object_chunks(object_id, reply_objects[object_id], self.session_id),
                    timeout=600,
                )
        reply_proto.run_id = proto.run_id
        reply_proto.src_node_id = self.node_id
        await self.stub.PushMessages(
            fleet_pb2.PushMessagesRequest(session_id=self.session_id, messages=[reply_proto]),
            timeout=30,
        )

    async def deactivate(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=self.session_id), timeout=30
            )


def _object_chunks(
    object_id: str, data: memoryview, session_id: str
) -> Iterator[objects_pb2.ObjectChunk]:
    view = data.cast("B")
    total = len(view)
    for offset in range(0, max(total, 1), CHUNK_SIZE):
        yield objects_pb2.ObjectChunk(
            object_id=object_id, total_size=total, offset=offset,
            data=bytes(view[offset : offset + CHUNK_SIZE]), session_id=session_id,
        )  # fmt: skip


def _scale_worker_process(
    conn: Any, address: str, root: Path, nodes: list[tuple[int, Path, Path]]
) -> None:
    """A worker process: ``nodes`` simulated nodes on one event loop, driven by ``conn``."""
    asyncio.run(_scale_worker(conn, address, root, nodes))


async def _scale_worker(
    conn: Any, address: str, root: Path, specs: list[tuple[int, Path, Path]]
) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def listen() -> None:
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                command = "stop"
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command == "stop":
                return

    root_pem = root.read_bytes()
    nodes = []
    for index, chain, key in specs:
        identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
        nodes.append(SimNode(index, address, channel_credentials(root_pem, identity)))
    stats = WorkerStats()
    tasks: list[asyncio.Task[None]] = []
    threading.Thread(target=listen, name="commands", daemon=True).start()
    conn.send({"ready": os.getpid()})
    try:
        while True:
            command = await commands.get()
            if command == "connect":
                outcomes = await asyncio.gather(
                    *(node.activate(stats) for node in nodes), return_exceptions=True
                )
                live = []
                for node, outcome in zip(nodes, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        stats.error("ActivateNode", outcome)
                    else:
                        live.append(node)
                for node in live:
                    tasks.append(asyncio.create_task(node.heartbeats(stats)))
                    tasks.append(asyncio.create_task(node.work(stats)))
                conn.send(
                    {
                        "activated": stats.activated,
                        "retries": stats.activation_retries,
                        "errors": dict(stats.errors),
                        "first_errors": list(stats.first_errors),
                    }
                )
            elif command == "report":
                conn.send(asdict(stats))
            elif command == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.deactivate() for node in nodes if node.session_id))
        await asyncio.gather(*(node.channel.close(None) for node in nodes))
        with contextlib.suppress(OSError):
            conn.send({"stopped": True})


def fleet_connections(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the link's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "01"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                count += 1
    return count


PROBE_INTERVAL = 0.1
PROBE_NAME = "probe"


class HeartbeatProbe:
    """One more node, in this process, on its own thread and blocking channel: a Heartbeat every
    ``PROBE_INTERVAL`` s, timed. It shows how fast the link answers while all the simulated
    nodes are connected, without the worker processes' own scheduling in the figure."""

    def __init__(self, address: str, pki: TestPki) -> None:
        chain, key = pki.paths(PROBE_NAME)
        identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
        root = pki.trust_bundle_path
        self.channel = grpc.secure_channel(
            address,
            channel_credentials(root.read_bytes(), identity),
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        context = ConnectionContext(
            address, tls=True, has_client_certificate=True, root_certificates=str(root)
        )
        self.client = FleetClient(self.channel, context)
        self.session = self.client.activate()
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            start = time.monotonic()
            ok = True
            try:
                self.client.heartbeat(self.session)
            except FlwrmtlsError:
                ok = False
            self.samples.append((start, time.monotonic() - start, ok))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(FlwrmtlsError):
            self.client.deactivate(self.session)
        self.channel.close()


class Workers:
    """The worker processes and their pipes."""

    def __init__(self, count: int, address: str, root: Path, pki: TestPki, nodes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.pipes: list[Any] = []
        for worker in range(count):
            specs = [
                (index, *pki.paths(f"{SIM_NODE_PREFIX}{index}"))
                for index in range(worker + 1, nodes + 1, count)
            ]
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_scale_worker_process, args=(theirs, address, root, specs), daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(ours)

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        answers = []
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                if not pipe.poll(timeout):
                    raise BenchError(f"worker {process.pid} did not answer in {timeout:.0f} s")
                answers.append(pipe.recv())
            except (EOFError, OSError):
                raise BenchError(
                    f"worker {process.pid} exited with {process.exitcode} (its traceback is above)"
                ) from None
        return answers

    def ask(self, command: str, timeout: float) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send(command)
        return self.receive(timeout)

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                if pipe.poll(60):
                    pipe.recv()
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
