"""Side by side: Flower 1.42 and flwrmtls, the same FedAvg app through both command lines.

Run ``.venv/bin/python bench/bench_compare.py`` (``make bench`` runs it last);
``--quick`` for one small cell (2 nodes x 1 MiB, 1 run), ``--json`` for JSON instead of the
tables; ``--nodes``/``--model-mb``/``--repetitions``/``--systems`` select (``--help``).

Three systems per cell (N nodes, a model of M MiB), each with a federation of its own, one
after the other, all on 127.0.0.1 with every file in one ``tempfile.mkdtemp`` directory that is
removed at the end:

* ``flower``: Flower 1.42.0 from its own virtualenv (``bench/.venv-flwr``, made on first use:
  ``flwr==1.42.0`` with ``--no-deps``, then the requirements its wheel's METADATA lists, with
  certifi unpinned because flwr pins a certifi newer than the package index has, and numpy).
  ``flower-superlink --ssl-certfile --ssl-keyfile --ssl-ca-certfile --enable-supernode-auth
  --disable-runtime-dependency-installation --host 127.0.0.1 --port P`` (Fleet, Control and
  runtime APIs share that one HTTPS port; state in memory, Flower's default, or in a SQLite
  file with ``--flower-database file``); one P-384 key per node made by ``ssh-keygen``,
  registered with ``flwr supernode register KEY.pub``; N ``flower-supernode --superlink
  127.0.0.1:P --root-certificates ca.crt --auth-supernode-private-key KEY --port Q_K``
  (each its own runtime port; at most 4 activating at once, and one that exits during
  start-up is started again, as a supervisor would: on 2 cores some give up on a slow TLS
  handshake); ``flwr run APP --stream --run-config ...``. The server
  certificate is the same one the flwrmtls link uses (the built-in CA's test PKI: EC P-256,
  ``DNS:localhost, IP:127.0.0.1``). The CLI finds the SuperLink through ``config.toml`` in its
  ``FLWR_HOME``; the SuperLink, every SuperNode and the CLI each have their own ``FLWR_HOME``.
  ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1`` for all of them.
* ``mtls``: flwrmtls as bench_rounds.py runs it: a link with ``--ssl-require-client-auth
  --ssl-crl-file``, N nodes with their own certificates, ``flwrmtls run APP --stream``.
* ``eckey``: flwrmtls in EC-key mode: the link with ``--ssl-require-client-auth --node-auth key
  --enable-supernode-auth`` (nodes sign every call with their key; the Control API still wants
  the CLI's certificate), one P-384 ``ssh-keygen`` key per node, registered with ``flwrmtls
  supernode register`` (all keys in one call), nodes with ``--auth-supernode-private-key``.

The app logic is the same on both: the ServerApp makes M MiB of random float32 in 4 arrays and
runs the system's own FedAvg (fraction_train 1.0, fraction_evaluate 0, min nodes N) for 3 rounds;
the ClientApp adds 1 to every array and replies with num-examples 100 (equal weights). Timing
starts once each system's own CLI lists all N nodes online; then R runs (default 3) per system.

Figures per run:

* wall: the run command (``flwr run`` / ``flwrmtls run``, both ``--stream``), start to exit;
* per round: from ``time.monotonic()`` stamps each ServerApp takes itself and prints at the end
  (a ``BENCH-...`` line in the streamed log). flwrmtls: bench_rounds.py's stamps (before
  ``FedAvg.start``, then FedAvg's log line after each round's aggregation). Flower: a logging
  handler on the ``flwr`` logger stamps the ``[ROUND r/N]`` line Flower's ``Strategy.start``
  logs when round r begins and the ``Strategy execution finished`` line; round r runs from
  the stamp before ``strategy.start`` (round 1) or the ``[ROUND r/N]`` line (later rounds) to
  the next ``[ROUND`` line (or the finished line), so both systems' rounds tile the time from
  the strategy's start to its end the same way. Round 1 includes starting the app processes;
* peak RSS of the link and of node 1, each with all its descendants (sampled from
  ``/proc/<pid>/status`` every 50 ms): for Flower the SuperLink + its SuperExec + the
  ServerApp process, and SuperNode 1 + its SuperExec + its ClientApp processes; for flwrmtls
  the link + its ServerApp process, and node-1 + its ClientApp process.

Tables: median (min-max) over the runs, and the ratio of the medians Flower / flwrmtls (mTLS
and EC-key). It only prints figures; nothing here asserts on timings. docs/performance.md,
"Side by side with Flower 1.42", has the figures and how they were made.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_rounds import (
    DEFAULT_ROUNDS,
    DEFAULT_STAGGER,
    BenchError,
    CellResult,
    Federation,
    RssSampler,
    _Interrupt,
    _raise_on_sigterm,
    descendants,
    issue_nodes,
    machine_facts,
    measure_cell,
    mib,
    positive,
    positive_float,
    progress,
    rss_kib,
    spread,
    write_app,
)

from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import ManagedProcess, run_cli

FLWR_VERSION = "1.42.0"
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_FLOWER_VENV = BENCH_DIR / ".venv-flwr"
STAMP_NAME = ".installed"
SYSTEMS = ("flower", "mtls", "eckey")
SYSTEM_NAMES = {
    "flower": f"Flower {FLWR_VERSION}",
    "mtls": "flwrmtls mTLS",
    "eckey": "flwrmtls EC-key",
}
FULL_CELLS = tuple((n, m) for m in (1.0, 50.0) for n in (2, 8, 32))
QUICK_CELLS = ((2, 1.0),)
DEFAULT_REPETITIONS = 3
FLOWER_RUN_TIMEOUT = 1800.0
FLOWER_START_TIMEOUT = 300.0
FLOWER_IDLE_TIMEOUT = 60.0
FLOWER_ACTIVATING = 4
FLOWER_MAX_RESTARTS = 20
FLOWER_EXTRA_ATTEMPTS = 1
TAG_VARIABLE = "FLWRMTLS_BENCH_COMPARE_TAG"
KEY_BITS = 384

_ACTIVE = re.compile(r"SuperNode ID: \d+")
_FLOWER_RUN_ID = re.compile(r"Successfully started run (\d+)")
_FLOWER_STAMPS = re.compile(r"BENCH-FLOWER (\{.*\})")

# --- Flower's virtualenv ----------------------------------------------------------------------


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def flower_requirements(python: Path) -> list[str]:
    """The requirements of the installed flwr wheel (its METADATA), extras left out, certifi
    unpinned (flwr 1.42.0 asks for a certifi newer than the package index offers)."""
    script = "import importlib.metadata as m, json; print(json.dumps(m.requires('flwr') or []))"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    requirements = []
    for requirement in json.loads(result.stdout):
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        name = spec.split("[")[0].strip()
        for stop in "<>=!~ ":
            name = name.split(stop)[0]
        requirements.append("certifi" if name.lower() == "certifi" else requirement)
    return requirements


def ensure_flower_venv(venv: Path) -> Path:
    """Make ``venv`` with flwr==1.42.0 unless its stamp says it is there; return its bin/."""
    stamp = venv / STAMP_NAME
    python = venv / "bin" / "python"
    expected = f"flwr=={FLWR_VERSION}"
    if stamp.exists() and python.exists() and stamp.read_text().splitlines()[:1] == [expected]:
        return venv / "bin"
    progress(f"making {venv} ({expected}, once; about 30 s)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(python, "--no-deps", expected)
    requirements = flower_requirements(python)
    _pip(python, *requirements, "numpy")
    stamp.write_text("\n".join([expected, *requirements, "numpy"]) + "\n", encoding="utf-8")
    return venv / "bin"


# --- the Flower app ---------------------------------------------------------------------------

_FLOWER_PYPROJECT = f"""\
[project]
name = "benchcompare"
version = "1.0.0"
description = "flwrmtls bench_compare: FedAvg over M MiB of float32 in 4 arrays"
license = "Apache-2.0"
dependencies = ["flwr=={FLWR_VERSION}", "numpy"]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "benchcompare.server_app:app"
clientapp = "benchcompare.client_app:app"

[tool.flwr.app.config]
rounds = 3
min-nodes = 2
model-mb = 1.0
distinct-updates = false
"""

_FLOWER_SERVER = '''\
"""FedAvg over M MiB of float32 in 4 arrays; prints its own monotonic stamps at the end."""

import json
import logging
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RoundLines(logging.Handler):
    """Stamps time.monotonic() when Strategy.start logs "[ROUND r/N]" and "...finished"."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rounds = []
        self.finished = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("[ROUND "):
            self.rounds.append(time.monotonic())
        elif message.startswith("Strategy execution finished"):
            self.finished.append(time.monotonic())


@app.main()
def main(grid: Grid, context: Context) -> None:
    entered = time.monotonic()
    config = context.run_config
    per_array = max(1, int(float(config["model-mb"]) * (1 << 20) / 4 / 4))
    rng = np.random.default_rng()
    arrays = ArrayRecord([rng.random(per_array, dtype=np.float32) for _ in range(4)])
    nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    lines = RoundLines()
    logging.getLogger("flwr").addHandler(lines)
    start = time.monotonic()
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(config["rounds"]))
    finished = time.monotonic()
    stamps = {
        "entered": entered, "start": start, "round_starts": lines.rounds,
        "strategy_finished": lines.finished, "finished": finished,
        "model_bytes": sum(a.numpy().nbytes for a in result.arrays.values()),
    }
    print("BENCH-FLOWER " + json.dumps(stamps), flush=True)
'''

_FLOWER_CLIENT = '''\
"""Adds 1 (or 1 + index/1024 with distinct-updates) to every array."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    step = 1.0
    if context.run_config["distinct-updates"]:
        step += int(context.node_config.get("index", 0)) / 1024
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    updated = ArrayRecord([array + np.float32(step) for array in arrays])
    content = RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": 100})})
    return Message(content=content, reply_to=msg)
'''


def write_flower_app(directory: Path) -> Path:
    package = directory / "benchcompare"
    package.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(_FLOWER_PYPROJECT, encoding="utf-8")
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "server_app.py").write_text(_FLOWER_SERVER, encoding="utf-8")
    (package / "client_app.py").write_text(_FLOWER_CLIENT, encoding="utf-8")
    return directory


# --- keys, ports, processes -------------------------------------------------------------------


def ssh_keygen(directory: Path, name: str) -> Path:
    """An ECDSA P-384 key pair as ssh-keygen writes it (private key mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", str(KEY_BITS), "-N", "", "-f", str(key),
         "-C", name],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    key.chmod(0o600)
    return key


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that were free a moment ago (Flower's processes
    take a fixed ``--port``)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class FlowerProcess(ManagedProcess):
    """A Flower executable from its virtualenv, its output in ``log_path``."""

    def __init__(
        self, executable: Path, args: Sequence[str], log_path: Path, env: dict[str, str]
    ) -> None:
        super().__init__(args, log_path, env)
        self.executable = executable
        self.module = executable.name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(self.executable), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
            )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries this benchmark's tag (started by it)."""
    marker = f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes() and _state(int(entry.name)) != "Z":
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def sweep(tag: str) -> None:
    """SIGTERM, then SIGKILL, whatever this benchmark started and is still running (Flower's
    SuperExec processes run in their own sessions and outlive their parent for a while)."""
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        pids = tagged_pids(tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and tagged_pids(tag):
            time.sleep(0.1)


# --- flwrmtls in EC-key mode ------------------------------------------------------------------


class MtlsFederation(Federation):
    """bench_rounds' federation, as it is (its wait_idle knows the link's and nodes' spares)."""


class EcKeyFederation(MtlsFederation):
    """The link with ``--node-auth key --enable-supernode-auth``; nodes sign with registered
    ssh-keygen keys (the Control API still requires the CLI's operator certificate)."""

    def key(self, index: int) -> Path:
        return self.directory / "keys" / f"node_{index}"

    def link_args(self) -> list[str]:
        return [*super().link_args(), "--node-auth", "key", "--enable-supernode-auth"]

    def node_args(self, index: int, fleet_port: int) -> list[str]:
        return [
            "--superlink", f"127.0.0.1:{fleet_port}",
            "--root-certificates", str(self.pki.trust_bundle_path),
            "--auth-supernode-private-key", str(self.key(index)),
            "--clientappio-api-address", "127.0.0.1:0", "--node-config", f"index={index}",
        ]  # fmt: skip

    def before_nodes(self) -> None:
        keys = [ssh_keygen(self.key(i).parent, self.key(i).name) for i in range(1, self.size + 1)]
        result = run_cli(
            ["supernode", "register", *(f"{key}.pub" for key in keys), "--format", "json"],
            env=self.env,
        )
        if result.returncode != 0:
            raise BenchError(f"flwrmtls supernode register failed: {result.stderr.strip()}")
        registered = json.loads(result.stdout)
        if len(registered) != self.size:
            raise BenchError(f"registered {len(registered)} of {self.size} keys: {result.stdout}")


# --- Flower -----------------------------------------------------------------------------------


class FlowerFederation:
    """A SuperLink and ``size`` SuperNodes with registered keys, and a CLI home pointing at it."""

    def __init__(
        self, bin_dir: Path, pki: TestPki, directory: Path, size: int, env: dict[str, str],
        stagger: float, *, file_database: bool = False,
    ) -> None:  # fmt: skip
        self.bin = bin_dir
        self.file_database = file_database
        self.pki = pki
        self.directory = directory
        self.size = size
        self.stagger = stagger
        self.base_env = {
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "COLUMNS": "400",
        }
        self.cli_env = self.env_for("cli")
        self.link: FlowerProcess | None = None
        self.nodes: list[FlowerProcess] = []
        self.port = 0
        self.ports: list[int] = []
        self.restarts: list[str] = []
        self.runs = 0

    def env_for(self, name: str) -> dict[str, str]:
        home = self.directory / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        return {**self.base_env, "FLWR_HOME": str(home)}

    def key(self, index: int) -> Path:
        return self.directory / "keys" / f"node_{index}"

    def cli(self, args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "flwr"), *args],
            capture_output=True, text=True, env={**os.environ, **self.cli_env},
            cwd=self.directory, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(self.size + 1)
        self.port = ports[0]
        chain, key = self.pki.paths("server")
        link = FlowerProcess(
            self.bin / "flower-superlink",
            [
                "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
                "--ssl-ca-certfile", str(self.pki.trust_bundle_path),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                *(["--database", str(self.directory / "link.db")] if self.file_database else []),
                "--host", "127.0.0.1", "--port", str(self.port),
            ],
            self.directory / "superlink.log",
            self.env_for("superlink"),
        )  # fmt: skip
        self.link = link
        link.start()
        link.wait_for(r"Uvicorn running on https://127\.0\.0\.1:\d+", timeout=120.0)
        (self.directory / "home" / "cli" / "config.toml").write_text(
            "[superlink]\n"
            'default = "bench"\n\n'
            "[superlink.bench]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.pki.trust_bundle_path.resolve()}"\n',
            encoding="utf-8",
        )
        keys = [ssh_keygen(self.key(i).parent, self.key(i).name) for i in range(1, self.size + 1)]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="register") as pool:
            list(pool.map(self.register, keys))
        self.ports = ports
        self.nodes = [self.supernode(index) for index in range(1, self.size + 1)]
        deadline = time.monotonic() + FLOWER_START_TIMEOUT
        for index, node in enumerate(self.nodes):
            # At most FLOWER_ACTIVATING SuperNodes activating at once: with more, on 2 cores,
            # some time out in their TLS handshake and give up (exit code 305).
            while sum(1 for n in self.nodes[:index] if not self.active(n)) >= FLOWER_ACTIVATING:
                self.restart_failed(deadline)
                time.sleep(0.1)
            node.start()
            time.sleep(self.stagger)
        while not all(self.active(node) for node in self.nodes):
            self.restart_failed(deadline)
            time.sleep(0.1)
        while (online := self.online()) < self.size:
            self.restart_failed(deadline)
            if time.monotonic() > deadline:
                raise BenchError(f"only {online} of {self.size} SuperNodes online after start-up")
            time.sleep(0.5)

    def supernode(self, index: int) -> FlowerProcess:
        return FlowerProcess(
            self.bin / "flower-supernode",
            [
                "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.pki.trust_bundle_path),
                "--auth-supernode-private-key", str(self.key(index)),
                "--host", "127.0.0.1", "--port", str(self.ports[index]),
                "--node-config", f"index={index}",
            ],
            self.directory / f"supernode-{index}.log",
            self.env_for(f"supernode-{index}"),
        )  # fmt: skip

    @staticmethod
    def active(node: FlowerProcess) -> bool:
        return node.process is not None and _ACTIVE.search(node.log) is not None

    def restart_failed(self, deadline: float) -> None:
        """Start again (as a supervisor would) a SuperNode that exited during start-up; keep
        its log as supernode-K.log.N and the reason in ``restarts``."""
        if time.monotonic() > deadline:
            raise BenchError(f"SuperNodes not all active after {FLOWER_START_TIMEOUT:.0f} s")
        for index, node in enumerate(self.nodes, start=1):
            if node.process is None or node.process.poll() is None:
                continue
            log = node.log
            reasons = [line for line in log.splitlines() if "ERROR" in line or "Giving up" in line]
            self.restarts.append(f"supernode-{index}: " + " | ".join(reasons[-3:]))
            if len(self.restarts) > FLOWER_MAX_RESTARTS:
                raise BenchError(f"SuperNodes failed to start too often: {self.restarts}")
            node.log_path.rename(
                node.log_path.with_name(f"{node.log_path.name}.{len(self.restarts)}")
            )
            progress(f"  restarting {self.restarts[-1]}")
            replacement = self.supernode(index)
            self.nodes[index - 1] = replacement
            replacement.start()

    def register(self, key: Path) -> None:
        result = self.cli(["supernode", "register", f"{key}.pub", "--format", "json"])
        if result.returncode != 0 or not json.loads(result.stdout).get("success"):
            raise BenchError(f"flwr supernode register failed: {result.stdout}{result.stderr}")

    def online(self) -> int:
        result = self.cli(["supernode", "ls", "--format", "json"])
        if result.returncode != 0:
            raise BenchError(f"flwr supernode ls failed: {result.stdout}{result.stderr}")
        listed = json.loads(result.stdout)
        return sum(1 for node in listed.get("nodes", []) if node.get("status") == "online")

    def run_watched(self, args: Sequence[str], timeout: float) -> tuple[int, str, float, float]:
        """``flwr ARGS`` with its output in a file; (exit code, output, start, exit) with
        monotonic stamps taken right before it starts and right when it has exited. Gives up
        at once when the SuperLink or a SuperNode exits meanwhile (the run could not end)."""
        self.runs += 1
        output_path = self.directory / f"flwr-run-{self.runs}.out"
        exited: list[float] = []
        with output_path.open("wb") as output:
            started = time.monotonic()
            process = subprocess.Popen(
                [str(self.bin / "flwr"), *args],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.cli_env}, cwd=self.directory,
            )  # fmt: skip

            def wait() -> None:
                process.wait()
                exited.append(time.monotonic())

            waiter = threading.Thread(target=wait, name="flwr-run", daemon=True)
            waiter.start()
            try:
                while waiter.is_alive():
                    waiter.join(0.2)
                    if not waiter.is_alive():
                        break
                    gone = [
                        p.log_path.name
                        for p in [self.link, *self.nodes]
                        if p is not None and p.process is not None and p.process.poll() is not None
                    ]
                    if gone:
                        raise BenchError(f"{', '.join(gone)} exited during the run")
                    if time.monotonic() - started > timeout:
                        raise BenchError(f"flwr run did not end within {timeout:.0f} s")
            finally:
                if process.poll() is None:
                    process.kill()
                waiter.join()
        text = output_path.read_text(encoding="utf-8", errors="replace")
        return process.returncode, text, started, exited[0]

    def pids(self) -> tuple[int, int]:
        assert self.link is not None
        assert self.link.process is not None
        assert self.nodes[0].process is not None
        return self.link.process.pid, self.nodes[0].process.pid

    def app_processes(self) -> list[int]:
        """Live ServerApp and ClientApp processes under the SuperLink and the SuperNodes."""
        roots = [p.process.pid for p in [self.link, *self.nodes] if p and p.process]
        return [
            pid
            for root in roots
            for pid in descendants(root)
            if _state(pid) not in ("", "Z")
            and ("flwr-serverapp" in _cmdline(pid) or "flwr-clientapp" in _cmdline(pid))
        ]

    def wait_idle(self) -> bool:
        deadline = time.monotonic() + FLOWER_IDLE_TIMEOUT
        while time.monotonic() < deadline:
            if not self.app_processes():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM every SuperNode at once, then the SuperLink; then SIGKILL whatever of their
        descendants (SuperExecs, app processes) is still there."""
        roots = [p.process.pid for p in [self.link, *self.nodes] if p and p.process]
        left = [(pid, _cmdline(pid)) for root in roots for pid in descendants(root)]
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        started = [node for node in self.nodes if node.process is not None]
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop") as pool:
            list(pool.map(lambda node: node.stop(timeout=20.0), started))
        if self.link is not None and self.link.process is not None:
            self.link.stop(timeout=20.0)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_state(pid) not in ("", "Z") for pid, _ in left):
            time.sleep(0.1)
        for pid, command in left:
            if _state(pid) not in ("", "Z") and _cmdline(pid) == command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tails(self) -> str:
        parts = []
        for process in [self.link, *self.nodes[:2]]:
            if process is not None:
                parts.append(f"--- {process.log_path.name}:\n{process.log[-3000:]}")
        return "\n".join(parts)


@dataclass(frozen=True)
class FlowerRepetition:
    run_id: str
    wall_seconds: float
    """``flwr run APP --stream``, from its start to its exit."""
    start_seconds: float
    """Command start -> the ServerApp calls ``strategy.start``."""
    round_seconds: list[float]
    end_seconds: float
    """The strategy's end -> command exit."""
    link_peak_rss_mib: float
    """The SuperLink and its descendants (SuperExec, ServerApp process)."""
    link_own_peak_rss_mib: float
    node_peak_rss_mib: float
    """SuperNode 1 and its descendants (SuperExec, ClientApp processes)."""
    node_own_peak_rss_mib: float
    rss_samples: int
    idle_after_seconds: float
    """Command exit -> no ServerApp or ClientApp process of the run left."""


@dataclass(frozen=True)
class FlowerCell:
    nodes: int
    model_mb: float
    startup_seconds: float
    link_idle_rss_mib: float
    node_idle_rss_mib: float
    repetitions: list[FlowerRepetition]
    supernode_restarts: list[str]
    """SuperNodes that exited during start-up and were started again (with the reason)."""
    failed_runs: list[str]
    """Runs (or federation start-ups) that failed, with the reason; not in the figures."""


def flower_rounds(stamps: dict[str, Any], rounds: int) -> list[float]:
    starts: list[float] = stamps["round_starts"]
    ends: list[float] = stamps["strategy_finished"] or [stamps["finished"]]
    if len(starts) != rounds:
        raise BenchError(f"the ServerApp logged {len(starts)} rounds, not {rounds}: {stamps}")
    bounds = [float(stamps["start"]), *starts[1:], ends[0]]
    return [after - before for before, after in itertools.pairwise(bounds)]


def measure_flower_run(
    federation: FlowerFederation, app_dir: Path, model_mb: float, *, rounds: int, distinct: bool
) -> FlowerRepetition:
    run_config = (
        f"rounds={rounds} min-nodes={federation.size} model-mb={model_mb:g} "
        f"distinct-updates={'true' if distinct else 'false'}"
    )
    link_pid, node_pid = federation.pids()
    with RssSampler({"link": link_pid, "node": node_pid}) as sampler:
        returncode, output, started, exited = federation.run_watched(
            ["run", str(app_dir), "--stream", "--run-config", run_config],
            timeout=FLOWER_RUN_TIMEOUT,
        )
        idle = federation.wait_idle()
        idle_at = time.monotonic()
    if not idle:
        progress(f"  (Flower app processes still alive {FLOWER_IDLE_TIMEOUT:.0f} s after the run)")
    run_match = _FLOWER_RUN_ID.search(output)
    stamps_match = _FLOWER_STAMPS.search(output)
    if returncode != 0 or run_match is None or stamps_match is None:
        raise BenchError(
            f"flwr run exited with {returncode} (or printed no run id or stamps):\n"
            f"{output[-3000:]}\n{federation.log_tails()}"
        )
    stamps: dict[str, Any] = json.loads(stamps_match.group(1))
    link, node = sampler.peaks["link"], sampler.peaks["node"]
    return FlowerRepetition(
        run_id=run_match.group(1),
        wall_seconds=exited - started,
        start_seconds=float(stamps["start"]) - started,
        round_seconds=flower_rounds(stamps, rounds),
        end_seconds=exited - float((stamps["strategy_finished"] or [stamps["finished"]])[0]),
        link_peak_rss_mib=mib(link.tree_kib),
        link_own_peak_rss_mib=mib(link.own_kib),
        node_peak_rss_mib=mib(node.tree_kib),
        node_own_peak_rss_mib=mib(node.own_kib),
        rss_samples=sampler.samples,
        idle_after_seconds=idle_at - exited,
    )


def measure_flower_cell(
    bin_dir: Path, pki: TestPki, work: Path, app_dir: Path, env: dict[str, str],
    cell: tuple[int, float], args: argparse.Namespace,
) -> FlowerCell:  # fmt: skip
    """``args.repetitions`` timed runs. A run that fails is recorded (``failed_runs``), its
    federation stopped and a new one started (its SuperExec may have given up), up to
    ``FLOWER_EXTRA_ATTEMPTS`` more runs than asked for."""
    nodes, model_mb = cell
    repetitions: list[FlowerRepetition] = []
    failed: list[str] = []
    restarts: list[str] = []
    startups: list[float] = []
    link_idle = node_idle = 0.0
    attempt = 0
    while len(repetitions) < args.repetitions:
        if attempt >= args.repetitions + FLOWER_EXTRA_ATTEMPTS:
            raise BenchError(
                f"Flower, {nodes} nodes x {model_mb:g} MiB: {len(failed)} runs failed, "
                f"{len(repetitions)} completed; last: {failed[-1] if failed else ''}"
            )
        directory = work / f"cell-{nodes}-nodes-{model_mb:g}-mb-flower-{len(startups) + 1}"
        federation = FlowerFederation(
            bin_dir, pki, directory, nodes, env, args.stagger,
            file_database=args.flower_database == "file",
        )  # fmt: skip
        up = False
        try:
            begun = time.monotonic()
            federation.start()
            up = True
            startups.append(time.monotonic() - begun)
            link_pid, node_pid = federation.pids()
            link_idle = mib(rss_kib(link_pid) + sum(rss_kib(p) for p in descendants(link_pid)))
            node_idle = mib(rss_kib(node_pid) + sum(rss_kib(p) for p in descendants(node_pid)))
            progress(
                f"flower: {nodes} nodes x {model_mb:g} MiB: all online after {startups[-1]:.1f} s"
            )
            while len(repetitions) < args.repetitions:
                attempt += 1
                repetition = measure_flower_run(
                    federation, app_dir, model_mb, rounds=args.rounds,
                    distinct=args.distinct_updates,
                )  # fmt: skip
                repetitions.append(repetition)
                progress(
                    f"  run {len(repetitions)}/{args.repetitions}: "
                    f"{repetition.wall_seconds:.2f} s, rounds "
                    + " ".join(f"{s:.2f}" for s in repetition.round_seconds)
                )
        except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            reason = str(error)
            failed.append(reason)
            progress(f"  Flower run or start-up failed ({reason.splitlines()[0][:200]}); again")
            if not up:
                attempt += 1  # a start-up that failed counts as an attempt too
        finally:
            federation.stop()
            restarts += federation.restarts
    return FlowerCell(
        nodes=nodes,
        model_mb=model_mb,
        startup_seconds=startups[0],
        link_idle_rss_mib=link_idle,
        node_idle_rss_mib=node_idle,
        repetitions=repetitions,
        supernode_restarts=restarts,
        failed_runs=failed,
    )


# --- summaries and output ---------------------------------------------------------------------

METRICS = (
    ("wall_seconds", "Wall time of the run command, start to exit (seconds)", 2),
    ("round_mean_seconds", "Time per round: mean of a run's 3 rounds (seconds)", 2),
    ("round_1_seconds", "Round 1 (seconds; includes starting the app processes)", 2),
    ("later_round_seconds", "Rounds 2-3 (seconds)", 2),
    ("link_peak_rss_mib", "Peak RSS of the link with all its descendants (MiB)", 0),
    ("node_peak_rss_mib", "Peak RSS of node 1 with all its descendants (MiB)", 0),
)


def summarize_system(cell: CellResult | FlowerCell) -> dict[str, Any]:
    reps = cell.repetitions
    later = [s for r in reps for s in (r.round_seconds[1:] or r.round_seconds[:1])]
    return {
        "wall_seconds": spread([r.wall_seconds for r in reps]),
        "start_seconds": spread([r.start_seconds for r in reps]),
        "end_seconds": spread([r.end_seconds for r in reps]),
        "round_mean_seconds": spread([statistics.fmean(r.round_seconds) for r in reps]),
        "round_1_seconds": spread([r.round_seconds[0] for r in reps]),
        "later_round_seconds": spread(later),
        "link_peak_rss_mib": spread([r.link_peak_rss_mib for r in reps]),
        "node_peak_rss_mib": spread([r.node_peak_rss_mib for r in reps]),
    }


def system_result(cell: CellResult | FlowerCell) -> dict[str, Any]:
    """What one system measured in one cell, as JSON: every run, and their summary."""
    data = asdict(cell)
    data.pop("nodes")
    data.pop("model_mb")
    return {**data, "summary": summarize_system(cell)}


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Flower's median / flwrmtls's median, per flwrmtls system and metric."""
    flower = systems.get("flower", {}).get("summary")
    found: dict[str, dict[str, float]] = {}
    for name in ("mtls", "eckey"):
        other = systems.get(name, {}).get("summary")
        if flower is None or other is None:
            continue
        found[name] = {
            metric: flower[metric]["median"] / other[metric]["median"]
            for metric, _, _ in METRICS
            if other[metric]["median"] > 0
        }
    return found


def _fmt(values: dict[str, float], digits: int, reps: int) -> str:
    text = f"{values['median']:.{digits}f}"
    if reps > 1:
        text += f" ({values['min']:.{digits}f}-{values['max']:.{digits}f})"
    return text


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))


def render_tables(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    systems: list[str] = config["systems"]
    lines = [
        f"Side by side: Flower {FLWR_VERSION} and flwrmtls, the same FedAvg app "
        f"({config['rounds']} rounds, all N nodes, M MiB of float32 in 4 arrays, +1 per node)",
        f"  flwrmtls {machine['flwrmtls']} at {result['revision']}, Python {machine['python']}, "
        f"{machine['cpus_usable']} CPUs usable"
        + (f" ({machine['cpu_model']})" if machine["cpu_model"] else "")
        + f", {machine['memory_gib']} GiB; {result['date']}",
        "  Flower: TLS, --enable-supernode-auth, keys registered with `flwr supernode register`; "
        "flwrmtls mTLS: --ssl-require-client-auth; flwrmtls EC-key: --node-auth key "
        "--enable-supernode-auth",
        f"  {config['repetitions']} run(s) per system and cell: median (min-max); ratio = "
        "Flower's median / flwrmtls's median"
        + ("; distinct updates" if config["distinct_updates"] else ""),
    ]
    names = [SYSTEM_NAMES[s] for s in systems]
    ratio_names = [f"Flower/{SYSTEM_NAMES[s].split(' ', 1)[1]}" for s in systems if s != "flower"]
    show_ratios = "flower" in systems and len(ratio_names) > 0
    widths = [5, 4] + [22] * len(names) + ([15] * len(ratio_names) if show_ratios else [])
    for number, (metric, title, digits) in enumerate(METRICS, start=1):
        lines += ["", f"{number}. {title}"]
        header = ["nodes", "MiB", *names] + (ratio_names if show_ratios else [])
        lines.append(_row(header, widths))
        for cell in result["cells"]:
            row = [str(cell["nodes"]), f"{cell['model_mb']:g}"]
            for system in systems:
                data = cell["systems"].get(system, {})
                if "summary" in data:
                    row.append(_fmt(data["summary"][metric], digits, len(data["repetitions"])))
                else:
                    row.append("failed" if "error" in data else "-")
            if show_ratios:
                for system in systems:
                    if system == "flower":
                        continue
                    value = cell["ratios"].get(system, {}).get(metric)
                    row.append(f"{value:.1f}x" if value is not None else "-")
            lines.append(_row(row, widths))
    lines.append("")
    for cell in result["cells"]:
        startups = ", ".join(
            f"{SYSTEM_NAMES[s]} {cell['systems'][s]['startup_seconds']:.1f} s"
            for s in systems
            if "startup_seconds" in cell["systems"].get(s, {})
        )
        lines.append(
            f"  {cell['nodes']} nodes x {cell['model_mb']:g} MiB: start-up until all online "
            f"(not timed): {startups}; load average before/after "
            f"{cell['loadavg_before']:.2f}/{cell['loadavg_after']:.2f}"
        )
        failures = cell["systems"].get("flower", {}).get("failed_runs")
        if failures:
            lines.append(
                f"    Flower: {len(failures)} run(s) or start-up(s) failed and were left out "
                f"(first: {failures[0].splitlines()[0][:160]})"
            )
        restarts = cell["systems"].get("flower", {}).get("supernode_restarts")
        if restarts:
            lines.append(
                f"    Flower: {len(restarts)} SuperNode(s) exited during start-up and were "
                "started again (see --json)"
            )
        for system in systems:
            error = cell["systems"].get(system, {}).get("error")
            if error:
                lines.append(f"    {SYSTEM_NAMES[system]} failed: {error.splitlines()[0]}")
    if not result.get("complete", True):
        lines.append("  (incomplete: the run stopped before its last cell)")
    lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2 nodes x 1 MiB, 1 run per system")
    p.add_argument(
        "--repetitions",
        type=positive,
        help=f"runs per system and cell (default {DEFAULT_REPETITIONS}; 1 with --quick)",
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
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        help="which systems to run (default: all three, in this order)",
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
        "--flower-database",
        choices=("memory", "file"),
        default="memory",
        help="the SuperLink's state: Flower's default, in memory, or --database link.db "
        "(default memory)",
    )
    p.add_argument(
        "--flower-venv",
        type=Path,
        default=DEFAULT_FLOWER_VENV,
        help=f"Flower's virtualenv, made if missing (default {DEFAULT_FLOWER_VENV})",
    )
    p.add_argument(
        "--setup-only", action="store_true", help="only make Flower's virtualenv, then exit"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) and print it"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--save", type=Path, help="also write the JSON to this file (after every cell)")
    p.add_argument(
        "--from-json", type=Path, help="only print the tables of a JSON file --save wrote"
    )
    return p


def cells_of(args: argparse.Namespace) -> list[tuple[int, float]]:
    if args.nodes or args.model_mb:
        return [(n, m) for m in args.model_mb or [1.0] for n in args.nodes or [2]]
    return list(QUICK_CELLS if args.quick else FULL_CELLS)


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return 0.0


def revision() -> str:
    """The commit this script runs from, with "+changes" when the work tree differs."""
    root = BENCH_DIR.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def flower_version(bin_dir: Path) -> str:
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or "unknown"


def make_result(
    args: argparse.Namespace, cells: list[dict[str, Any]], flwr: str, started: float,
    *, complete: bool,
) -> dict[str, Any]:  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%d"),
        "revision": revision(),
        "machine": {**machine_facts(), "flwr": flwr},
        "config": {
            "systems": args.systems,
            "rounds": args.rounds,
            "repetitions": args.repetitions,
            "stagger_seconds": args.stagger,
            "distinct_updates": args.distinct_updates,
            "quick": args.quick,
            "flower_key_bits": KEY_BITS,
            "flower_database": args.flower_database,
        },
        "cells": cells,
        "complete": complete,
        "elapsed_seconds": time.monotonic() - started,
    }


def save(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.save is not None:
        args.save.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def run(
    args: argparse.Namespace, work: Path, tag: str, started: float
) -> tuple[list[dict[str, Any]], str]:
    """Every cell, every system; with ``--save``, the JSON so far is written after each cell."""
    cells = cells_of(args)
    systems: list[str] = args.systems
    pki = make_test_pki(work / "pki")
    if "mtls" in systems:
        issue_nodes(pki, max(n for n, _ in cells))
    app_dir = write_app(work / "app")
    flower_app = write_flower_app(work / "flower-app")
    (work / "tmp").mkdir()
    env = {"FLWRMTLS_HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), TAG_VARIABLE: tag}
    bin_dir = ensure_flower_venv(args.flower_venv) if "flower" in systems else None
    flwr = flower_version(bin_dir) if bin_dir is not None else ""
    results: list[dict[str, Any]] = []
    for cell in cells:
        before = loadavg()
        measured: dict[str, dict[str, Any]] = {}
        for system in systems:
            try:
                found: CellResult | FlowerCell
                if system == "flower":
                    assert bin_dir is not None
                    found = measure_flower_cell(bin_dir, pki, work, flower_app, env, cell, args)
                else:
                    federation_type = EcKeyFederation if system == "eckey" else MtlsFederation
                    found = measure_cell(
                        pki, work, app_dir, env, cell, args,
                        federation_type=federation_type, label=system,
                    )  # fmt: skip
                measured[system] = system_result(found)
            except BenchError as error:
                progress(f"{system}: {error}")
                measured[system] = {"error": str(error)}
            finally:
                sweep(tag)
        results.append(
            {
                "nodes": cell[0],
                "model_mb": cell[1],
                "systems": measured,
                "ratios": ratios(measured),
                "loadavg_before": before,
                "loadavg_after": loadavg(),
            }
        )
        save(args, make_result(args, results, flwr, started, complete=False))
    return results, flwr


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.setup_only:
        ensure_flower_venv(args.flower_venv)
        return 0
    if args.from_json is not None:
        print(render_tables(json.loads(args.from_json.read_text(encoding="utf-8"))))
        return 0
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else DEFAULT_REPETITIONS
    args.systems = [s for s in SYSTEMS if s in args.systems]
    started = time.monotonic()
    tag = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="flwrmtls-bench-compare-"))
    try:
        with _raise_on_sigterm():
            cells, flwr = run(args, work, tag, started)
    except BenchError as error:
        raise SystemExit(f"bench_compare: {error}") from None
    except _Interrupt as interrupt:
        raise SystemExit(f"bench_compare: stopped by signal {interrupt.signum}") from None
    finally:
        sweep(tag)
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = make_result(args, cells, flwr, started, complete=True)
    save(args, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_tables(result))
    failed = any("error" in s for cell in cells for s in cell["systems"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
