"""Flower 1.42 under the benchmarks: its virtualenv, a federation, ``flwr run``.

* The virtualenv (``bench/.venv-flwr``): ``flwr==1.42.0`` with ``--no-deps``, then the
  requirements its wheel's METADATA lists, certifi unpinned (flwr 1.42.0 pins a certifi newer
  than the package index has), and numpy.
* The federation: ``flower-superlink --ssl-certfile --ssl-keyfile --ssl-ca-certfile
  --enable-supernode-auth --disable-runtime-dependency-installation --host 127.0.0.1 --port P``
  (Fleet, Control and runtime APIs share that port; state in memory, Flower's default); one
  P-384 key per SuperNode from ``ssh-keygen``, registered with ``flwr supernode register``;
  N ``flower-supernode --superlink 127.0.0.1:P --root-certificates ca.crt
  --auth-supernode-private-key KEY --port Q_K --node-config index=K``, at most 4 activating at
  once, one that exits during start-up started again as a supervisor would (on 2 cores some
  give up on a slow TLS handshake). The server certificate is the flwrmtls link's (the test
  PKI: EC P-256, ``DNS:localhost, IP:127.0.0.1``). Every process has its own ``FLWR_HOME``;
  ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``.
* A run: ``flwr run APP --stream --run-config ...``, timed from its start to its exit; peak RSS
  of the SuperLink tree (SuperLink, its SuperExec, the ServerApp) and of SuperNode 1's tree
  (SuperNode, its SuperExec, its ClientApp processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from flwrmtls.testing.federation import ssh_keygen
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import ManagedProcess
from harness import BenchError, progress
from harness.procs import RssSampler, descendants, mib, tree_rss_bytes
from harness.venvs import BENCH_DIR, ensure_venv, pip_install
from harness.workload import Run, check_model, runs_json, tile

__all__ = ["FLWR_VERSION", "FlowerFederation", "ensure_flower_venv", "measure_flower_cell"]

FLWR_VERSION = "1.42.0"
DEFAULT_VENV = BENCH_DIR / ".venv-flwr"
RUN_TIMEOUT = 1800.0
START_TIMEOUT = 300.0
IDLE_TIMEOUT = 60.0
ACTIVATING = 4
MAX_RESTARTS = 20
EXTRA_ATTEMPTS = 1

_ACTIVE = re.compile(r"SuperNode ID: \d+")
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_SERVER = re.compile(r"BENCH-SERVER (\{.*\})")


def flower_requirements(python: Path) -> list[str]:
    """The requirements of the installed flwr wheel (its METADATA), extras left out, certifi
    unpinned."""
    script = "import importlib.metadata as m, json; print(json.dumps(m.requires('flwr') or []))"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    requirements = []
    for requirement in json.loads(result.stdout):
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        name = re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0]
        requirements.append("certifi" if name.lower() == "certifi" else requirement)
    return requirements


def ensure_flower_venv(venv: Path = DEFAULT_VENV) -> Path:
    def install(python: Path) -> list[str]:
        pip_install(python, "--no-deps", f"flwr=={FLWR_VERSION}")
        requirements = flower_requirements(python)
        pip_install(python, *requirements, "numpy")
        return [*requirements, "numpy"]

    return ensure_venv(venv, f"flwr=={FLWR_VERSION}", install)


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


class ExternalProcess(ManagedProcess):
    """An executable of another system, its output in ``log_path``."""

    def __init__(
        self,
        executable: Path | str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        super().__init__(args, log_path, dict(env), cwd)
        self.executable = str(executable)
        self.module = Path(self.executable).name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.executable, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self.cwd,
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.module} has not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def stop_trees(processes: Sequence[ExternalProcess], timeout: float = 20.0) -> None:
    """SIGTERM every process at once and wait; then SIGKILL whatever of their descendants
    (seen before the signals) is still there and still the same program."""
    left = [
        (child, _cmdline(child)) for p in processes if p.process for child in descendants(p.pid)
    ]
    for process in processes:
        process.signal_stop()
    started = [p for p in processes if p.process is not None]
    if started:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop") as pool:
            list(pool.map(lambda p: p.stop(timeout=timeout), started))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(pid) for pid, _ in left):
        time.sleep(0.1)
    for pid, command in left:
        if _alive(pid) and _cmdline(pid) == command:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


class FlowerFederation:
    """A SuperLink and ``size`` SuperNodes with registered keys, and a CLI home pointing at it;
    a context manager."""

    def __init__(
        self,
        bin_dir: Path,
        pki: TestPki,
        directory: Path,
        size: int,
        env: Mapping[str, str],
        stagger: float,
    ) -> None:
        self.bin = bin_dir
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
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cli_env = self.env_for("cli")
        self.link: ExternalProcess | None = None
        self.nodes: list[ExternalProcess] = []
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
        ports = free_ports(self.size + 1)
        self.port, self.ports = ports[0], ports
        chain, key = self.pki.paths("server")
        self.link = ExternalProcess(
            self.bin / "flower-superlink",
            [
                "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
                "--ssl-ca-certfile", str(self.pki.trust_bundle_path),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port),
            ],
            self.directory / "superlink.log",
            self.env_for("superlink"),
        )  # fmt: skip
        self.link.start()
        self.link.wait_for(r"Uvicorn running on https://127\.0\.0\.1:\d+", timeout=120.0)
        (self.directory / "home" / "cli" / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.pki.trust_bundle_path.resolve()}"\n',
            encoding="utf-8",
        )
        keys = [ssh_keygen(self.key(i).parent, self.key(i).name) for i in range(1, self.size + 1)]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="register") as pool:
            list(pool.map(self.register, keys))
        self.nodes = [self.supernode(index) for index in range(1, self.size + 1)]
        deadline = time.monotonic() + START_TIMEOUT
        for index, node in enumerate(self.nodes):
            while sum(1 for n in self.nodes[:index] if not self.active(n)) >= ACTIVATING:
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

    def supernode(self, index: int) -> ExternalProcess:
        return ExternalProcess(
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
    def active(node: ExternalProcess) -> bool:
        return node.process is not None and _ACTIVE.search(node.log) is not None

    def restart_failed(self, deadline: float) -> None:
        """Start again (as a supervisor would) a SuperNode that exited during start-up; keep
        its log as supernode-K.log.N and the reason in ``restarts``."""
        if time.monotonic() > deadline:
            raise BenchError(f"SuperNodes not all active after {START_TIMEOUT:.0f} s")
        for index, node in enumerate(self.nodes, start=1):
            if node.process is None or node.process.poll() is None:
                continue
            reasons = [
                line for line in node.log.splitlines() if "ERROR" in line or "Giving up" in line
            ]
            self.restarts.append(f"supernode-{index}: " + " | ".join(reasons[-3:]))
            if len(self.restarts) > MAX_RESTARTS:
                raise BenchError(f"SuperNodes failed to start too often: {self.restarts}")
            node.log_path.rename(
                node.log_path.with_name(f"{node.log_path.name}.{len(self.restarts)}")
            )
            progress(f"  restarting {self.restarts[-1]}")
            self.nodes[index - 1] = self.supernode(index)
            self.nodes[index - 1].start()

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
        """``flwr ARGS`` with its output in a file: (exit code, output, start, exit), monotonic
        stamps right before it starts and right when it has exited. Gives up at once when the
        SuperLink or a SuperNode exits meanwhile (the run could not end)."""
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
                    gone = [p.log_path.name for p in self.processes() if not p.running()]
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

    def processes(self) -> list[ExternalProcess]:
        return [p for p in [self.link, *self.nodes] if p is not None and p.process is not None]

    def app_processes(self) -> list[int]:
        """Live ServerApp and ClientApp processes under the SuperLink and the SuperNodes."""
        return [
            pid
            for root in self.processes()
            for pid in descendants(root.pid)
            if _alive(pid)
            and ("flwr-serverapp" in _cmdline(pid) or "flwr-clientapp" in _cmdline(pid))
        ]

    def wait_idle(self) -> bool:
        deadline = time.monotonic() + IDLE_TIMEOUT
        while time.monotonic() < deadline:
            if not self.app_processes():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM every SuperNode at once, then the SuperLink; then SIGKILL whatever of their
        descendants (SuperExecs, app processes) is still there."""
        stop_trees(self.nodes)
        if self.link is not None:
            stop_trees([self.link])

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}:\n{p.log[-3000:]}"
            for p in [self.link, *self.nodes[:2]]
            if p is not None
        )

    def __enter__(self) -> FlowerFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure_flower_run(
    fed: FlowerFederation, app_dir: Path, model_mb: float, *, rounds: int, distinct: bool
) -> Run:
    run_config = (
        f"rounds={rounds} min-nodes={fed.size} model-mb={float(model_mb)!r} "
        f"distinct-updates={'true' if distinct else 'false'}"
    )
    assert fed.link is not None
    with RssSampler({"link": fed.link.pid, "node": fed.nodes[0].pid}) as sampler:
        returncode, output, started, exited = fed.run_watched(
            ["run", str(app_dir), "--stream", "--run-config", run_config], timeout=RUN_TIMEOUT
        )
        idle = fed.wait_idle()
        idle_at = time.monotonic()
    if not idle:
        progress(f"  (Flower app processes still alive {IDLE_TIMEOUT:.0f} s after the run)")
    run_match = _RUN_ID.search(output)
    stamps_match = _SERVER.search(output)
    if returncode != 0 or run_match is None or stamps_match is None:
        raise BenchError(
            f"flwr run exited with {returncode} (or printed no run id or stamps)\n"
            f"{output[-3000:]}\n{fed.log_tails()}"
        )
    stamps: dict[str, Any] = json.loads(stamps_match.group(1))
    starts: list[float] = stamps["round_starts"]
    if len(starts) != rounds:
        raise BenchError(f"the ServerApp logged {len(starts)} rounds, not {rounds}: {stamps}")
    end = float((stamps["strategy_finished"] or [stamps["finished"]])[0])
    bounds = [float(stamps["start"]), *starts[1:], end]
    return Run(
        wall_seconds=exited - started,
        round_seconds=tile(bounds),
        start_seconds=bounds[0] - started,
        end_seconds=exited - end,
        link_peak_rss_mib=sampler.tree_mib("link"),
        link_own_peak_rss_mib=sampler.own_mib("link"),
        node_peak_rss_mib=sampler.tree_mib("node"),
        node_own_peak_rss_mib=sampler.own_mib("node"),
        rss_samples=sampler.peaks.samples,
        idle_after_seconds=idle_at - exited,
        model_shift=check_model(stamps["probe"], fed.size, rounds, distinct=distinct),
        detail={"run_id": run_match.group(1)},
    )


def measure_flower_cell(
    bin_dir: Path,
    pki: TestPki,
    work: Path,
    env: Mapping[str, str],
    app_dir: Path,
    *,
    nodes: int,
    model_mb: float,
    rounds: int,
    repetitions: int,
    distinct: bool,
    stagger: float = 0.2,
) -> dict[str, Any]:
    """``repetitions`` checked runs. A run that fails is recorded (``failed_runs``), its
    federation stopped and a new one started, up to ``EXTRA_ATTEMPTS`` more runs than asked."""
    runs: list[Run] = []
    failed: list[str] = []
    restarts: list[str] = []
    startups: list[float] = []
    idle: dict[str, float] = {}
    attempt = 0
    while len(runs) < repetitions:
        if attempt >= repetitions + EXTRA_ATTEMPTS:
            raise BenchError(
                f"Flower, {nodes} nodes x {model_mb:g} MiB: {len(failed)} runs failed, "
                f"{len(runs)} completed; last: {failed[-1] if failed else ''}"
            )
        directory = work / f"flower-{len(startups) + 1}"
        fed = FlowerFederation(bin_dir, pki, directory, nodes, env, stagger)
        up = False
        try:
            begun = time.monotonic()
            with fed:
                up = True
                startups.append(time.monotonic() - begun)
                assert fed.link is not None
                idle = {
                    "link": mib(tree_rss_bytes(fed.link.pid)),
                    "node": mib(tree_rss_bytes(fed.nodes[0].pid)),
                }
                progress(
                    f"flower: {nodes} nodes x {model_mb:g} MiB: online after {startups[-1]:.1f} s"
                )
                while len(runs) < repetitions:
                    attempt += 1
                    run = measure_flower_run(
                        fed, app_dir, model_mb, rounds=rounds, distinct=distinct
                    )
                    runs.append(run)
                    progress(
                        f"  run {len(runs)}/{repetitions}: {run.wall_seconds:.2f} s, rounds "
                        + " ".join(f"{s:.2f}" for s in run.round_seconds)
                    )
        except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            reason = str(error)
            failed.append(reason)
            progress(f"  Flower run or start-up failed ({reason.splitlines()[0][:200]}); again")
            if not up:
                attempt += 1
        finally:
            restarts += fed.restarts
    return {
        "startup_seconds": startups[0],
        "idle_rss_mib": idle,
        "supernode_restarts": restarts,
        "failed_runs": failed,
        **runs_json(runs),
    }
