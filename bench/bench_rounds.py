"""Federated rounds end to end: a real mTLS link, N real nodes, ``flwrmtls run``, 3 FedAvg rounds.

Run ``.venv/bin/python bench/bench_rounds.py`` (``make bench`` runs it after bench_auth.py);
``--quick`` for a smaller run (about 20 s), ``--json`` for JSON instead of the table;
``--nodes``/``--model-mb``/``--repetitions``/``--rounds`` pick other cells (``--help``).
Everything runs as real processes on 127.0.0.1 (ports chosen by the OS), with the test PKI,
the databases, the app and every temporary file in one directory made by ``tempfile.mkdtemp``
and removed at the end.

Each cell (N nodes, a model of M MiB) gets its own federation:

* a new link with ``--ssl-require-client-auth --ssl-crl-file`` and ``--heartbeat-interval 5``;
* N node processes, each with its own certificate from the built-in CA (``node-K``,
  ``O=Site K``), started with a small stagger; timing starts only once the link's Control API
  (``flwrmtls supernode list --format json``) shows all N online;
* R repetitions (default 3; 1 with ``--quick``) of
  ``flwrmtls run APP --stream --run-config 'min-nodes=N model-mb=M ...'``, timed from the
  command's start to its exit. APP is written into the temporary directory: the global model is
  M MiB of float32 in 4 arrays (random, so that no run finds its objects already on the link);
  each node adds 1 elementwise and returns it with num-examples 100; FedAvg with fraction 1.0,
  min nodes N, evaluation off, 3 rounds.

Figures per repetition:

* wall time of the run command, split into start (command -> FedAvg starts: CLI, bundle,
  StartRun, ServerApp process, model), the rounds, and end (last round -> command exits);
* each round's time, from ``time.monotonic()`` stamps the ServerApp takes itself (before
  ``FedAvg.start`` and when FedAvg logs its line for the round), split with stamps around the
  Grid calls and stamps the ClientApps print (the monotonic clock is shared by all processes):
  wait (round start -> send_and_receive), to clients (-> the last ClientApp has its message
  decoded), client work (-> the last ClientApp's handler returned), from clients
  (-> send_and_receive returned, replies decoded), aggregate (-> FedAvg's line);
* peak RSS of the link process and of one node process (node-1), each with its children (the
  ServerApp, the ClientApp), sampled from ``/proc/<pid>/status`` every 50 ms by a thread;
* CPU seconds by role (CLI, link, ServerApp, nodes, ClientApps), from ``/proc/<pid>/stat``
  (a process's own time, and its children's once reaped) between the command's start and the
  moment the run's app processes have all exited.

All N nodes return the same bytes (the brief's "add 1"), so the link stores a reply's arrays
once and the ServerApp fetches them once; ``--distinct-updates`` makes node K add
``1 + K/1024`` instead, so every reply's arrays are new objects.

It only prints figures; nothing here asserts on timings. See docs/performance.md, "Rounds".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cryptography
import grpc
import numpy as np

from flwrmtls import __version__ as flwrmtls_version
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import LinkProcess, NodeProcess, run_cli

DEFAULT_ROUNDS = 3
HEARTBEAT_INTERVAL = 5
DEFAULT_REPETITIONS = 3
DEFAULT_STAGGER = 0.2
SAMPLE_INTERVAL = 0.05
FULL_CELLS = ((2, 1.0), (8, 1.0), (32, 1.0), (2, 50.0))
QUICK_CELLS = ((2, 1.0), (8, 1.0))
RUN_TIMEOUT = 600.0
START_TIMEOUT = 180.0
IDLE_TIMEOUT = 30.0

NVFLARE = {
    (2, 1.0): 17.0,
    (2, 50.0): 20.5,
    (8, 1.0): 21.0,
    (8, 50.0): 36.6,
}
"""NVIDIA FLARE 2.9 with mTLS, seconds per job (the issue's figures; not measured here)."""
NVFLARE_ROUND = 2.5

# --- the app ----------------------------------------------------------------------------------

_PYPROJECT = """\
[project]
name = "bench-rounds"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "bench_rounds_app.server_app:app"
clientapp = "bench_rounds_app.client_app:app"

[tool.flwrmtls.app.config]
rounds = 3
min-nodes = 2
model-mb = 1.0
wait-timeout = 120.0
distinct-updates = false
"""

_SERVER = '''\
"""FedAvg over M MiB of float32 in 4 arrays; prints its own monotonic stamps at the end."""

import json
import logging
import time

import numpy as np

from flwrmtls.app import ArrayRecord, FedAvg, ServerApp

app = ServerApp()


class RoundEnds(logging.Handler):
    """Stamps time.monotonic() when FedAvg logs its line for a round."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.ends = []

    def emit(self, record):
        if record.getMessage().startswith("round "):
            self.ends.append(time.monotonic())


class TimedGrid:
    """The run's Grid, stamping the calls FedAvg makes on it."""

    def __init__(self, grid):
        self._grid = grid
        self.waits = []
        self.exchanges = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    @property
    def run_id(self):
        return self._grid.run_id

    def wait_for_nodes(self, minimum, timeout):
        self.waits.append(time.monotonic())
        return self._grid.wait_for_nodes(minimum, timeout)

    def send_and_receive(self, messages, *, timeout=None):
        start = time.monotonic()
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        self.exchanges.append([start, time.monotonic()])
        return replies


@app.main()
def main(grid, context):
    entered = time.monotonic()
    config = context.run_config
    per_array = max(1, int(float(config["model-mb"]) * (1 << 20) / 4 / 4))
    rng = np.random.default_rng()
    arrays = ArrayRecord(
        {f"layer-{i}": rng.random(per_array, dtype=np.float32) for i in range(4)}
    )
    nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        wait_timeout=float(config["wait-timeout"]),
    )
    ends = RoundEnds()
    logging.getLogger("flwrmtls.app.strategy").addHandler(ends)
    timed = TimedGrid(grid)
    start = time.monotonic()
    result = strategy.start(grid=timed, initial_arrays=arrays, num_rounds=int(config["rounds"]))
    finished = time.monotonic()
    stamps = {
        "entered": entered, "start": start, "round_ends": ends.ends, "waits": timed.waits,
        "exchanges": timed.exchanges, "finished": finished,
        "model_bytes": sum(a.nbytes for a in result.arrays.values()),
    }
    print("BENCH-ROUNDS " + json.dumps(stamps), flush=True)
    return result
'''

_CLIENT = '''\
"""Adds 1 (or 1 + index/1024 with distinct-updates) to every array; prints monotonic stamps."""

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ClientApp, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg, context):
    received = time.monotonic()
    step = 1.0
    if context.run_config["distinct-updates"]:
        step += int(context.node_config.get("index", 0)) / 1024
    arrays = ArrayRecord(
        {key: value + np.float32(step) for key, value in msg.content["arrays"].items()}
    )
    reply = msg.create_reply(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100})})
    )
    stamps = {
        "round": int(msg.content["config"]["server-round"]),
        "received": received,
        "replied": time.monotonic(),
    }
    print("BENCH-CLIENT " + json.dumps(stamps), flush=True)
    return reply
'''


def write_app(directory: Path) -> Path:
    package = directory / "bench_rounds_app"
    package.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT, encoding="utf-8")
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "server_app.py").write_text(_SERVER, encoding="utf-8")
    (package / "client_app.py").write_text(_CLIENT, encoding="utf-8")
    return directory


# --- memory and CPU ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB; 0 when it is gone (or a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux: /proc/<pid>/task/*/children)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    except (FileNotFoundError, ProcessLookupError):
        return []
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children(child))
    return found


@dataclass
class Peak:
    own_kib: int = 0
    tree_kib: int = 0


class RssSampler:
    """Peak RSS of some processes, alone and with their descendants, every ``interval`` s."""

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_INTERVAL) -> None:
        self._pids = pids
        self._interval = interval
        self.peaks = {name: Peak() for name in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for name, pid in self._pids.items():
            own = rss_kib(pid)
            tree = own + sum(rss_kib(child) for child in descendants(pid))
            peak = self.peaks[name]
            peak.own_kib = max(peak.own_kib, own)
            peak.tree_kib = max(peak.tree_kib, tree)
        self.samples += 1

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def mib(kib: int) -> float:
    return kib / 1024


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own, reaped children's) CPU time of ``pid`` in clock ticks, user + system."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    # After the name: state is field 3, so utime..cstime (fields 14-17) are [11:15].
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime + stime, cutime + cstime


@dataclass(frozen=True)
class CpuSeconds:
    """CPU time spent by each role from the run command's start until its app processes exit."""

    cli: float
    link: float
    serverapp: float
    nodes: float
    """All node processes together (heartbeats included)."""
    clientapps: float
    """All ClientApp processes together."""


CPU_ROLES = ("cli", "link", "serverapp", "nodes", "clientapps")


class CpuMeter:
    """CPU of the link, the nodes, their reaped children (the app processes), and of this
    process's reaped children (the CLI)."""

    def __init__(self, link_pid: int, node_pids: Sequence[int]) -> None:
        self._link = link_pid
        self._nodes = list(node_pids)
        self._start = self._read()

    def _read(self) -> tuple[int, int, int, int, float]:
        link_own, link_children = cpu_ticks(self._link)
        node_own = node_children = 0
        for pid in self._nodes:
            own, reaped = cpu_ticks(pid)
            node_own += own
            node_children += reaped
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return link_own, link_children, node_own, node_children, usage.ru_utime + usage.ru_stime

    def stop(self) -> CpuSeconds:
        end = self._read()
        ticks = [(after - before) / _TICKS for before, after in zip(self._start, end, strict=True)]
        return CpuSeconds(
            cli=end[4] - self._start[4],
            link=ticks[0],
            serverapp=ticks[1],
            nodes=ticks[2],
            clientapps=ticks[3],
        )


# --- a federation -----------------------------------------------------------------------------


def node_name(index: int) -> str:
    return f"node-{index}"


def issue_nodes(pki: TestPki, count: int) -> None:
    """node-1 and node-2 come with the test PKI; issue node-3 .. node-``count``."""
    for index in range(3, count + 1):
        pki.ca.issue_node(node_name(index), organization=f"Site {index}")


class Federation:
    """A link and ``size`` nodes as subprocesses, and a CLI profile for the link."""

    def __init__(
        self, pki: TestPki, directory: Path, size: int, env: dict[str, str], stagger: float
    ) -> None:
        self.pki = pki
        self.directory = directory
        self.size = size
        self.env = env
        self.stagger = stagger
        self.link: LinkProcess | None = None
        self.nodes: list[NodeProcess] = []

    def link_args(self) -> list[str]:
        chain, key = self.pki.paths("server")
        return [
            "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
            "--serverappio-api-address", "127.0.0.1:0",
            "--database", str(self.directory / "link.db"),
            "--ssl-require-client-auth", "--ssl-ca-certfile", str(self.pki.trust_bundle_path),
            "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
            "--ssl-crl-file", str(self.pki.crl_path),
            "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
        ]  # fmt: skip

    def node_args(self, index: int, fleet_port: int) -> list[str]:
        chain, key = self.pki.paths(node_name(index))
        return [
            "--superlink", f"127.0.0.1:{fleet_port}",
            "--root-certificates", str(self.pki.trust_bundle_path),
            "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key),
            "--clientappio-api-address", "127.0.0.1:0", "--node-config", f"index={index}",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the link, the profile and the nodes; return once all are online."""
        link = LinkProcess(self.link_args(), self.directory / "link.log", self.env)
        self.link = link
        link.start_and_wait(timeout=60.0)
        self.add_profile(link.control_port)
        self.before_nodes()
        for index in range(1, self.size + 1):
            node = NodeProcess(
                self.node_args(index, link.fleet_port),
                self.directory / f"{node_name(index)}.log",
                self.env,
            )
            self.nodes.append(node)
            node.start()
            if index < self.size:
                time.sleep(self.stagger)
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            node.wait_active(timeout=max(1.0, deadline - time.monotonic()))
        self.wait_online(deadline)

    def before_nodes(self) -> None:
        """Called once the link and the CLI profile are up, before any node starts."""

    def add_profile(self, control_port: int) -> None:
        chain, key = self.pki.paths("cli-operator")
        result = run_cli(
            [
                "config", "add", "bench", "--address", f"127.0.0.1:{control_port}",
                "--root-certificates", str(self.pki.trust_bundle_path),
                "--client-certificate", str(chain), "--client-private-key", str(key),
                "--default",
            ],
            env=self.env,
        )  # fmt: skip
        if result.returncode != 0:
            raise BenchError(f"flwrmtls config add failed: {result.stderr.strip()}")

    def online(self) -> int:
        result = run_cli(["supernode", "list", "--format", "json"], env=self.env)
        if result.returncode != 0:
            raise BenchError(f"flwrmtls supernode list failed: {result.stderr.strip()}")
        nodes: list[dict[str, Any]] = json.loads(result.stdout)
        return sum(1 for node in nodes if node.get("status") == "online")

    def wait_online(self, deadline: float) -> None:
        while True:
            online = self.online()
            if online >= self.size:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"only {online} of {self.size} nodes online after start-up")
            time.sleep(0.5)

    def pids(self) -> tuple[int, int]:
        """The link's pid and node-1's."""
        assert self.link is not None
        assert self.link.process is not None
        assert self.nodes[0].process is not None
        return self.link.process.pid, self.nodes[0].process.pid

    def node_pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes if node.process is not None]

    def wait_idle(self) -> bool:
        """Wait until the last run's ServerApp and ClientApp processes have exited and been
        reaped (so that their CPU time shows in their parents' /proc/<pid>/stat).

        The link and each node keep a spare app process once idle (docs/runs.md), so "idle"
        is: none of the app processes seen now (when the run command has exited; the next
        spares start only after 1 s without a run) is still a child."""
        parents = [p.process.pid for p in [self.link, *self.nodes] if p and p.process]
        watched = self.app_pids()
        deadline = time.monotonic() + IDLE_TIMEOUT
        while time.monotonic() < deadline:
            if not watched & {pid for parent in parents for pid in children(parent)}:
                return True
            time.sleep(0.1)
        return False

    def app_pids(self) -> set[int]:
        """The link's and the nodes' children now (app processes, spares included)."""
        parents = [p.process.pid for p in [self.link, *self.nodes] if p and p.process]
        return {pid for parent in parents for pid in children(parent)}

    def stop(self) -> None:
        """SIGTERM every node at once (they deactivate), wait for them, then stop the link."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop") as pool:
            list(pool.map(lambda node: node.stop(timeout=20.0), self.started(self.nodes)))
        if self.link is not None and self.link.process is not None:
            self.link.stop()

    @staticmethod
    def started(nodes: Sequence[NodeProcess]) -> list[NodeProcess]:
        return [node for node in nodes if node.process is not None]

    def log_tails(self, count: int = 2) -> str:
        parts = []
        if self.link is not None:
            parts.append(f"--- link log:\n{self.link.log[-3000:]}")
        for node in self.nodes[:count]:
            parts.append(f"--- {node.log_path.name}:\n{node.log[-2000:]}")
        return "\n".join(parts)


class BenchError(Exception):
    """The benchmark could not measure: a process failed, or a run did not complete."""


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTiming:
    seconds: float
    """Previous round's end (or FedAvg's start) -> FedAvg's line for this round."""
    wait: float
    """-> send_and_receive called (wait_for_nodes, sampling, creating the messages)."""
    to_clients: float
    """-> the last ClientApp's handler entered (push, delivery, object downloads, decoding)."""
    client_work: float
    """-> the last ClientApp's handler returned."""
    from_clients: float
    """-> send_and_receive returned (encode, push via node and link, pull, decode)."""
    aggregate: float
    """-> FedAvg's line (reply checks and the weighted average)."""


@dataclass(frozen=True)
class Repetition:
    run_id: int
    wall_seconds: float
    """The run command, from its start to its exit."""
    start_seconds: float
    """Command start -> FedAvg starts (CLI, bundle, StartRun, ServerApp process, model)."""
    round_seconds: list[float]
    end_seconds: float
    """Last round's line -> command exit."""
    rounds: list[RoundTiming]
    link_peak_rss_mib: float
    """The link and its children (the ServerApp process)."""
    link_own_peak_rss_mib: float
    node_peak_rss_mib: float
    """node-1 and its children (the ClientApp process)."""
    node_own_peak_rss_mib: float
    rss_samples: int
    cpu_seconds: CpuSeconds
    idle_after_seconds: float
    """Command exit -> every ServerApp and ClientApp process of the run has exited."""


@dataclass(frozen=True)
class CellResult:
    nodes: int
    model_mb: float
    startup_seconds: float
    """Link and nodes started until all are online (not part of any run's time)."""
    link_idle_rss_mib: float
    node_idle_rss_mib: float
    repetitions: list[Repetition]


_RUN_ID = re.compile(r"run (\d+) started:")
_SERVER_STAMPS = re.compile(r"BENCH-ROUNDS (\{.*\})")


def client_stamps(
    federation: Federation, run_id: int, rounds: int
) -> dict[int, list[dict[str, float]]]:
    """Round -> the stamps every ClientApp of the run printed (relayed into the node logs)."""
    pattern = re.compile(rf"run {run_id} ClientApp: BENCH-CLIENT (\{{.*\}})")
    deadline = time.monotonic() + 10.0
    while True:
        by_round: dict[int, list[dict[str, float]]] = {r: [] for r in range(1, rounds + 1)}
        for node in federation.nodes:
            for match in pattern.finditer(node.log):
                stamps = json.loads(match.group(1))
                by_round.setdefault(int(stamps["round"]), []).append(stamps)
        if all(len(by_round[r]) >= federation.size for r in by_round):
            return by_round
        if time.monotonic() > deadline:
            counts = {r: len(s) for r, s in by_round.items()}
            raise BenchError(f"run {run_id}: ClientApp stamps per round {counts}")
        time.sleep(0.1)


def round_timings(
    server: dict[str, Any], clients: dict[int, list[dict[str, float]]]
) -> list[RoundTiming]:
    ends: list[float] = server["round_ends"]
    waits: list[float] = server["waits"]
    exchanges: list[list[float]] = server["exchanges"]
    if not (len(ends) == len(waits) == len(exchanges)):
        raise BenchError(f"the ServerApp's stamps do not match its rounds: {server}")
    timings = []
    previous = float(server["start"])
    for index, end in enumerate(ends):
        sent, returned = exchanges[index]
        received = max(s["received"] for s in clients[index + 1])
        replied = max(s["replied"] for s in clients[index + 1])
        timings.append(
            RoundTiming(
                seconds=end - previous,
                wait=sent - previous,
                to_clients=received - sent,
                client_work=replied - received,
                from_clients=returned - replied,
                aggregate=end - returned,
            )
        )
        previous = end
    return timings


def measure_run(
    federation: Federation, app_dir: Path, model_mb: float, *, rounds: int, distinct: bool
) -> Repetition:
    run_config = (
        f"rounds={rounds} min-nodes={federation.size} model-mb={model_mb:g} "
        f"distinct-updates={'true' if distinct else 'false'}"
    )
    link_pid, node_pid = federation.pids()
    cpu = CpuMeter(link_pid, federation.node_pids())
    with RssSampler({"link": link_pid, "node": node_pid}) as sampler:
        started = time.monotonic()
        result = run_cli(
            ["run", str(app_dir), "--stream", "--run-config", run_config],
            env=federation.env,
            timeout=RUN_TIMEOUT,
        )
        exited = time.monotonic()
        idle = federation.wait_idle()
        idle_at = time.monotonic()
    cpu_seconds = cpu.stop()
    if not idle:
        progress(f"  (app processes still alive {IDLE_TIMEOUT:.0f} s after the run)")
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise BenchError(
            f"flwrmtls run exited with {result.returncode}:\n{output[-3000:]}\n"
            + federation.log_tails()
        )
    run_match = _RUN_ID.search(result.stdout)
    stamps_match = _SERVER_STAMPS.search(result.stdout)
    if run_match is None or stamps_match is None:
        raise BenchError(f"no run id or no ServerApp stamps in the run's output:\n{output[-3000:]}")
    run_id = int(run_match.group(1))
    server: dict[str, Any] = json.loads(stamps_match.group(1))
    timings = round_timings(server, client_stamps(federation, run_id, rounds))
    link, node = sampler.peaks["link"], sampler.peaks["node"]
    return Repetition(
        run_id=run_id,
        wall_seconds=exited - started,
        start_seconds=float(server["start"]) - started,
        round_seconds=[r.seconds for r in timings],
        end_seconds=exited - float(server["round_ends"][-1]),
        rounds=timings,
        link_peak_rss_mib=mib(link.tree_kib),
        link_own_peak_rss_mib=mib(link.own_kib),
        node_peak_rss_mib=mib(node.tree_kib),
        node_own_peak_rss_mib=mib(node.own_kib),
        rss_samples=sampler.samples,
        cpu_seconds=cpu_seconds,
        idle_after_seconds=idle_at - exited,
    )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure_cell(
    pki: TestPki,
    work: Path,
    app_dir: Path,
    env: dict[str, str],
    cell: tuple[int, float],
    args: argparse.Namespace,
    *,
    federation_type: type[Federation] = Federation,
    label: str = "",
) -> CellResult:
    """Start a federation of ``federation_type`` for ``cell``, time ``args.repetitions`` runs."""
    nodes, model_mb = cell
    directory = work / f"cell-{nodes}-nodes-{model_mb:g}-mb{'-' + label if label else ''}"
    federation = federation_type(pki, directory, nodes, env, args.stagger)
    try:
        begun = time.monotonic()
        federation.start()
        startup = time.monotonic() - begun
        link_pid, node_pid = federation.pids()
        link_idle, node_idle = mib(rss_kib(link_pid)), mib(rss_kib(node_pid))
        progress(
            f"{label + ': ' if label else ''}{nodes} nodes x {model_mb:g} MiB: "
            f"all online after {startup:.1f} s"
        )
        repetitions = []
        for index in range(args.repetitions):
            repetition = measure_run(
                federation, app_dir, model_mb, rounds=args.rounds, distinct=args.distinct_updates
            )
            repetitions.append(repetition)
            progress(
                f"  run {index + 1}/{args.repetitions}: {repetition.wall_seconds:.2f} s, rounds "
                + " ".join(f"{s:.2f}" for s in repetition.round_seconds)
            )
    except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"{nodes} nodes x {model_mb:g} MiB: {error}") from None
    finally:
        federation.stop()
    return CellResult(
        nodes=nodes,
        model_mb=model_mb,
        startup_seconds=startup,
        link_idle_rss_mib=link_idle,
        node_idle_rss_mib=node_idle,
        repetitions=repetitions,
    )


# --- summaries and output ---------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(cell: CellResult) -> dict[str, Any]:
    reps = cell.repetitions
    # With --rounds 1 there is no later round: round 1 stands in for them.
    later_rounds = slice(1, None) if all(len(r.rounds) > 1 for r in reps) else slice(0, 1)
    later = [s for r in reps for s in r.round_seconds[later_rounds]]

    def phase(name: str, rounds: slice) -> dict[str, float]:
        return spread([getattr(timing, name) for r in reps for timing in r.rounds[rounds]])

    phases = ("wait", "to_clients", "client_work", "from_clients", "aggregate")
    return {
        "wall_seconds": spread([r.wall_seconds for r in reps]),
        "start_seconds": spread([r.start_seconds for r in reps]),
        "end_seconds": spread([r.end_seconds for r in reps]),
        "round_mean_seconds": spread([statistics.fmean(r.round_seconds) for r in reps]),
        "round_1_seconds": spread([r.round_seconds[0] for r in reps]),
        "later_round_seconds": spread(later),
        "round_1_phases": {name: phase(name, slice(0, 1)) for name in phases},
        "later_round_phases": {name: phase(name, later_rounds) for name in phases},
        "link_peak_rss_mib": spread([r.link_peak_rss_mib for r in reps]),
        "link_own_peak_rss_mib": spread([r.link_own_peak_rss_mib for r in reps]),
        "node_peak_rss_mib": spread([r.node_peak_rss_mib for r in reps]),
        "node_own_peak_rss_mib": spread([r.node_own_peak_rss_mib for r in reps]),
        "cpu_seconds": {
            role: spread([getattr(r.cpu_seconds, role) for r in reps]) for role in CPU_ROLES
        },
        "cpu_seconds_total": spread([sum(asdict(r.cpu_seconds).values()) for r in reps]),
        "idle_after_seconds": spread([r.idle_after_seconds for r in reps]),
    }


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    memory_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / (1 << 20)
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "flwrmtls": flwrmtls_version,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model,
        "memory_gib": round(memory_gib, 1),
    }


def _fmt(values: dict[str, float], digits: int = 1, reps: int = 1) -> str:
    text = f"{values['median']:.{digits}f}"
    if reps > 1:
        text += f" ({values['min']:.{digits}f}-{values['max']:.{digits}f})"
    return text


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))


def render_table(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    lines = [
        "flwrmtls rounds benchmark",
        f"  flwrmtls {machine['flwrmtls']}, Python {machine['python']} "
        f"({machine['implementation']}), grpcio {machine['grpcio']}, numpy {machine['numpy']}, "
        f"cryptography {machine['cryptography']}",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f", {machine['memory_gib']} GiB; {machine['platform']}",
        f"  a new link (mTLS + CRL, heartbeat {HEARTBEAT_INTERVAL} s) and N node processes per "
        f"cell; {config['rounds']} FedAvg rounds (fraction 1.0, evaluation off); "
        f"{config['repetitions']} run(s) per cell: median (min-max)"
        + ("; distinct updates" if config["distinct_updates"] else ""),
        "",
        "1. Per run (seconds; RSS in MiB, process + its children, peak over the run)",
    ]
    widths = [5, 6, 18, 16, 16, 16, 14, 14, 8]
    lines.append(
        _row(
            [
                "nodes",
                "MiB",
                "wall",
                "round 1",
                "rounds 2+",
                "per round",
                "link RSS",
                "node RSS",
                "NVFLARE",
            ],
            widths,
        )
    )
    for cell in result["cells"]:
        s, reps = cell["summary"], len(cell["repetitions"])
        flare = NVFLARE.get((cell["nodes"], float(cell["model_mb"])))
        lines.append(
            _row(
                [
                    str(cell["nodes"]),
                    f"{cell['model_mb']:g}",
                    _fmt(s["wall_seconds"], 2, reps),
                    _fmt(s["round_1_seconds"], 2, reps),
                    _fmt(s["later_round_seconds"], 2, reps),
                    _fmt(s["round_mean_seconds"], 2, reps),
                    _fmt(s["link_peak_rss_mib"], 0, reps),
                    _fmt(s["node_peak_rss_mib"], 0, reps),
                    f"{flare:.1f}" if flare is not None else "-",
                ],
                widths,
            )
        )
    lines += [
        f"  NVFLARE: NVIDIA FLARE 2.9 with mTLS, seconds per job as given in the issue (not "
        f"measured here); {NVFLARE_ROUND} s per round",
        "",
        "2. Where a run's time goes (medians, seconds)",
    ]
    widths = [5, 6, 10, 8, 8, 10, 12, 12, 10, 10, 14]
    lines.append(
        _row(
            [
                "nodes",
                "MiB",
                "start-up",
                "start",
                "end",
                "round",
                "wait",
                "to clients",
                "client",
                "from",
                "aggregate",
            ],
            widths,
        )
    )
    for cell in result["cells"]:
        s = cell["summary"]
        for label, key in (("1", "round_1_phases"), ("2+", "later_round_phases")):
            p = s[key]
            lines.append(
                _row(
                    [
                        str(cell["nodes"]) if label == "1" else "",
                        f"{cell['model_mb']:g}" if label == "1" else "",
                        f"{cell['startup_seconds']:.1f}" if label == "1" else "",
                        f"{s['start_seconds']['median']:.2f}" if label == "1" else "",
                        f"{s['end_seconds']['median']:.2f}" if label == "1" else "",
                        label,
                        f"{p['wait']['median']:.3f}",
                        f"{p['to_clients']['median']:.3f}",
                        f"{p['client_work']['median']:.3f}",
                        f"{p['from_clients']['median']:.3f}",
                        f"{p['aggregate']['median']:.3f}",
                    ],
                    widths,
                )
            )
    lines += [
        "  start-up: link + nodes until all online (before any run); start: run command -> "
        "FedAvg starts; end: last round -> command exits; per round: wait (-> send), to "
        "clients (-> last ClientApp has its message), client (-> last handler returned), from "
        "(-> replies decoded in the ServerApp), aggregate (-> FedAvg's line)",
        "",
        "3. CPU seconds per run, by role (medians; from the command's start until the run's "
        "app processes have exited)",
    ]
    widths = [5, 6, 8, 8, 10, 8, 11, 8, 12]
    lines.append(
        _row(
            [
                "nodes",
                "MiB",
                "CLI",
                "link",
                "ServerApp",
                "nodes",
                "ClientApps",
                "total",
                "total/wall",
            ],
            widths,
        )
    )
    for cell in result["cells"]:
        s = cell["summary"]
        cpu = {role: s["cpu_seconds"][role]["median"] for role in CPU_ROLES}
        total = s["cpu_seconds_total"]["median"]
        wall = s["wall_seconds"]["median"] + s["idle_after_seconds"]["median"]
        lines.append(
            _row(
                [str(cell["nodes"]), f"{cell['model_mb']:g}"]
                + [f"{cpu[role]:.2f}" for role in CPU_ROLES]
                + [f"{total:.2f}", f"{total / wall:.2f}"],
                widths,
            )
        )
    lines += [
        f"  total/wall: CPU cores kept busy on average (this machine has {machine['cpus_usable']})",
        "",
        f"total time {result['elapsed_seconds']:.1f} s",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="cells 2 nodes x 1 MiB and 8 nodes x 1 MiB, 1 run each (about 20 s)",
    )
    p.add_argument(
        "--repetitions",
        type=positive,
        help=f"runs per cell (default {DEFAULT_REPETITIONS}; 1 with --quick)",
    )
    p.add_argument(
        "--nodes",
        type=positive,
        nargs="+",
        help="only these node counts (cells: every --nodes with every --model-mb; default 2)",
    )
    p.add_argument(
        "--model-mb",
        type=positive_float,
        nargs="+",
        help="only these model sizes in MiB (with --nodes; default 1)",
    )
    p.add_argument(
        "--rounds",
        type=positive,
        default=DEFAULT_ROUNDS,
        help=f"FedAvg rounds per run (default {DEFAULT_ROUNDS})",
    )
    p.add_argument(
        "--stagger",
        type=float,
        default=DEFAULT_STAGGER,
        help=f"seconds between node starts (default {DEFAULT_STAGGER})",
    )
    p.add_argument(
        "--distinct-updates",
        action="store_true",
        help="node K adds 1 + K/1024, so no two replies share their array objects",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) and print it"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def cells_of(args: argparse.Namespace) -> list[tuple[int, float]]:
    if args.nodes or args.model_mb:
        return [(n, m) for n in args.nodes or [2] for m in args.model_mb or [1.0]]
    return list(QUICK_CELLS if args.quick else FULL_CELLS)


def run(args: argparse.Namespace, work: Path) -> list[CellResult]:
    cells = cells_of(args)
    pki = make_test_pki(work / "pki")
    issue_nodes(pki, max(n for n, _ in cells))
    app_dir = write_app(work / "app")
    (work / "tmp").mkdir()
    env = {"FLWRMTLS_HOME": str(work / "home"), "TMPDIR": str(work / "tmp")}
    return [measure_cell(pki, work, app_dir, env, cell, args) for cell in cells]


@dataclass(frozen=True)
class _Interrupt(Exception):
    signum: int


@contextlib.contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C, so processes and files are cleaned up."""

    def handler(signum: int, frame: object) -> None:
        raise _Interrupt(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else DEFAULT_REPETITIONS
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="flwrmtls-bench-rounds-"))
    try:
        with _raise_on_sigterm():
            cells = run(args, work)
    except BenchError as error:
        raise SystemExit(f"bench_rounds: {error}") from None
    except _Interrupt as interrupt:
        raise SystemExit(f"bench_rounds: stopped by signal {interrupt.signum}") from None
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_facts(),
        "config": {
            "rounds": args.rounds,
            "repetitions": args.repetitions,
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "stagger_seconds": args.stagger,
            "distinct_updates": args.distinct_updates,
            "quick": args.quick,
        },
        "cells": [{**asdict(cell), "summary": summarize(cell)} for cell in cells],
        "nvflare": {
            "cells": [{"nodes": n, "model_mb": m, "seconds": s} for (n, m), s in NVFLARE.items()],
            "round_seconds": NVFLARE_ROUND,
        },
        "elapsed_seconds": time.monotonic() - started,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
