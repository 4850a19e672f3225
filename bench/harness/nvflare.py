"""NVIDIA FLARE 2.9 under the benchmarks: its virtualenv, a provisioned project, job runs.

* The virtualenv (``bench/.venv-nvflare``): ``pip install nvflare==2.9.0 numpy``, as is.
* The project: ``nvflare provision -p project.yml`` of a server named ``localhost`` (its
  certificate's name; it listens on 127.0.0.1, on two ports free a moment ago: ``fed_learn_port``
  and ``admin_port``), clients ``site-1`` .. ``site-N`` and one project admin, with FLARE's
  defaults otherwise: ``connection_security: mtls`` (every participant presents a certificate
  from the project's CA) and its default scheme. Each startup kit is started with its own
  ``startup/sub_start.sh --once`` (the kit's script, without the restart loop), with the
  virtualenv's ``python3`` first on ``PATH``.
* A run: the job exported from FLARE's FedAvg recipe (bench/apps/nvflare_fedavg), submitted
  with FLARE's Flare API as the project admin over mTLS, timed from ``submit_job`` until its
  status first reads ``FINISHED`` (polled every 0.1 s); peak RSS of the server's process tree
  (the server parent and the job's server process) and of site-1's (the client parent and its
  job process, which runs the training script in process, FLARE's default).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import BenchError, progress
from harness.flower import ExternalProcess, free_ports, stop_trees
from harness.procs import RssSampler, descendants, mib, tree_rss_bytes
from harness.venvs import BENCH_DIR, ensure_venv, pip_install
from harness.workload import Run, check_model, runs_json, tile

__all__ = ["NVFLARE_VERSION", "NvflareFederation", "ensure_nvflare_venv", "measure_nvflare_cell"]

NVFLARE_VERSION = "2.9.0"
DEFAULT_VENV = BENCH_DIR / ".venv-nvflare"
ADMIN = "admin@bench.local"
SERVER = "localhost"
JOB_TIMEOUT = 1800.0
IDLE_TIMEOUT = 120.0


def ensure_nvflare_venv(venv: Path = DEFAULT_VENV) -> Path:
    def install(python: Path) -> list[str]:
        pip_install(python, f"nvflare=={NVFLARE_VERSION}", "numpy")
        return ["numpy"]

    return ensure_venv(venv, f"nvflare=={NVFLARE_VERSION}", install)


def project_yaml(clients: int, fed_learn_port: int, admin_port: int) -> str:
    """The project: one server, ``clients`` clients, one project admin; FLARE's defaults."""
    sites = "".join(
        f"  - name: site-{k}\n    type: client\n    org: bench\n" for k in range(1, clients + 1)
    )
    return (
        "api_version: 3\nname: bench\ndescription: flwrmtls bench_compare\n"
        "participants:\n"
        f"  - name: {SERVER}\n    type: server\n    org: bench\n"
        f"    fed_learn_port: {fed_learn_port}\n    admin_port: {admin_port}\n"
        f"{sites}"
        f"  - name: {ADMIN}\n    type: admin\n    org: bench\n    role: project_admin\n"
        "builders:\n"
        "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder\n"
        "    args:\n      template_file:\n        - master_template.yml\n"
        "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder\n"
        "    args:\n      config_folder: config\n"
        "  - path: nvflare.lighter.impl.cert.CertBuilder\n"
        "  - path: nvflare.lighter.impl.signature.SignatureBuilder\n"
    )


class NvflareFederation:
    """A provisioned FLARE project on 127.0.0.1: the server and ``size`` clients as processes;
    a context manager."""

    def __init__(
        self, bin_dir: Path, directory: Path, app_dir: Path, size: int, env: Mapping[str, str]
    ) -> None:
        self.bin = bin_dir
        self.directory = directory
        self.app_dir = app_dir
        self.size = size
        self.env = {
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": "",
        }
        self.kits = directory / "workspace" / "bench" / "prod_00"
        self.server: ExternalProcess | None = None
        self.clients: list[ExternalProcess] = []

    @property
    def admin_kit(self) -> Path:
        return self.kits / ADMIN

    def driver(self, *args: str, timeout: float) -> dict[str, Any]:
        """``python -m nvflare_fedavg.driver ARGS`` in the app's directory; its JSON line."""
        result = subprocess.run(
            [str(self.bin / "python"), "-m", "nvflare_fedavg.driver", *args],
            capture_output=True, text=True, env={**os.environ, **self.env}, cwd=self.app_dir,
            timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        lines = result.stdout.strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            answer = {"error": f"exit {result.returncode}"}
        if result.returncode != 0 or "error" in answer:
            raise BenchError(
                f"nvflare driver {args[0]}: {answer.get('error')}\n{result.stderr[-3000:]}"
            )
        return answer

    def provision(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fed_learn, admin = free_ports(2)
        project = self.directory / "project.yml"
        project.write_text(project_yaml(self.size, fed_learn, admin), encoding="utf-8")
        result = subprocess.run(
            [str(self.bin / "nvflare"), "provision", "-p", str(project), "-w",
             str(self.directory / "workspace")],
            capture_output=True, text=True, env={**os.environ, **self.env}, cwd=self.directory,
            timeout=300, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if result.returncode != 0 or not self.admin_kit.is_dir():
            raise BenchError(
                f"nvflare provision failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def kit_process(self, name: str) -> ExternalProcess:
        return ExternalProcess(
            "bash",
            [str(self.kits / name / "startup" / "sub_start.sh"), "--once"],
            self.directory / f"{name}.log",
            self.env,
            cwd=self.kits / name,
        )

    def start(self) -> None:
        self.provision()
        self.server = self.kit_process(SERVER)
        self.server.start()
        self.server.wait_for(r"Server started", timeout=120.0)
        self.clients = [self.kit_process(f"site-{k}") for k in range(1, self.size + 1)]
        for client in self.clients:
            client.start()
        self.driver(
            "wait-clients", str(self.admin_kit), "--clients", str(self.size), "--timeout", "300",
            timeout=420,
        )  # fmt: skip
        gone = [p.log_path.name for p in self.processes() if not p.running()]
        if gone:
            raise BenchError(f"{', '.join(gone)} exited during start-up\n{self.log_tails()}")

    def processes(self) -> list[ExternalProcess]:
        return [p for p in [self.server, *self.clients] if p is not None and p.process is not None]

    def job_processes(self) -> list[int]:
        """The job processes now: every descendant of the server and the clients."""
        return [pid for p in self.processes() for pid in descendants(p.pid)]

    def wait_idle(self) -> bool:
        deadline = time.monotonic() + IDLE_TIMEOUT
        while time.monotonic() < deadline:
            if not self.job_processes():
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        stop_trees(self.clients)
        if self.server is not None:
            stop_trees([self.server])

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}:\n{p.log[-3000:]}"
            for p in [self.server, *self.clients[:2]]
            if p is not None
        )

    def __enter__(self) -> NvflareFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def export_job(
    fed: NvflareFederation, model_mb: float, rounds: int, distinct: bool, stamps: Path
) -> Path:
    stamps.mkdir(parents=True, exist_ok=True)
    args = [
        "export", str(fed.directory / "job"), "--clients", str(fed.size),
        "--model-mb", repr(float(model_mb)), "--rounds", str(rounds), "--stamps-dir", str(stamps),
    ]  # fmt: skip
    answer = fed.driver(*args, *([] if distinct else ["--identical"]), timeout=300)
    return Path(answer["job"])


def measure_nvflare_run(
    fed: NvflareFederation, job: Path, stamps_dir: Path, *, rounds: int, distinct: bool
) -> Run:
    assert fed.server is not None
    with RssSampler({"link": fed.server.pid, "node": fed.clients[0].pid}) as sampler:
        answer = fed.driver(
            "submit", str(fed.admin_kit), str(job), "--timeout", str(JOB_TIMEOUT),
            timeout=JOB_TIMEOUT + 120,
        )  # fmt: skip
        idle = fed.wait_idle()
        idle_at = time.monotonic()
    if not idle:
        progress(f"  (FLARE job processes still alive {IDLE_TIMEOUT:.0f} s after the job)")
    if answer.get("status") != "FINISHED:COMPLETED":
        raise BenchError(
            f"FLARE job {answer.get('job_id')}: {answer.get('status')}\n{fed.log_tails()}"
        )
    path = stamps_dir / f"{answer['job_id']}.json"
    try:
        stamps: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BenchError(f"FLARE job {answer['job_id']}: no stamps ({error})") from None
    starts: list[float] = stamps["round_starts"]
    ends: list[float] = stamps["round_ends"]
    if len(starts) != rounds or len(ends) != rounds:
        raise BenchError(f"FLARE job stamped {len(starts)} starts, {len(ends)} ends: {stamps}")
    submitted, finished = float(answer["submitted"]), float(answer["finished"])
    bounds = [*starts, ends[-1]]
    return Run(
        wall_seconds=finished - submitted,
        round_seconds=tile(bounds),
        start_seconds=bounds[0] - submitted,
        end_seconds=finished - bounds[-1],
        link_peak_rss_mib=sampler.tree_mib("link"),
        link_own_peak_rss_mib=sampler.own_mib("link"),
        node_peak_rss_mib=sampler.tree_mib("node"),
        node_own_peak_rss_mib=sampler.own_mib("node"),
        rss_samples=sampler.peaks.samples,
        idle_after_seconds=idle_at - finished,
        model_shift=check_model(stamps["probe"], fed.size, rounds, distinct=distinct),
        detail={
            "job_id": answer["job_id"],
            "model_bytes": stamps.get("model_bytes"),
            "final_model_bytes": stamps.get("final_model_bytes"),
        },
    )


def measure_nvflare_cell(
    bin_dir: Path,
    work: Path,
    env: Mapping[str, str],
    app_dir: Path,
    *,
    nodes: int,
    model_mb: float,
    rounds: int,
    repetitions: int,
    distinct: bool,
) -> dict[str, Any]:
    """A newly provisioned project for the cell, one exported job, ``repetitions`` runs."""
    fed = NvflareFederation(bin_dir, work, app_dir, nodes, env)
    begun = time.monotonic()
    runs: list[Run] = []
    try:
        with fed:
            startup = time.monotonic() - begun
            assert fed.server is not None
            idle = {
                "link": mib(tree_rss_bytes(fed.server.pid)),
                "node": mib(tree_rss_bytes(fed.clients[0].pid)),
            }
            progress(
                f"nvflare: {nodes} clients x {model_mb:g} MiB: connected after {startup:.1f} s"
            )
            stamps = work / "stamps"
            job = export_job(fed, model_mb, rounds, distinct, stamps)
            for index in range(repetitions):
                run = measure_nvflare_run(fed, job, stamps, rounds=rounds, distinct=distinct)
                runs.append(run)
                progress(
                    f"  job {index + 1}/{repetitions}: {run.wall_seconds:.2f} s, rounds "
                    + " ".join(f"{s:.2f}" for s in run.round_seconds)
                )
    except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"nvflare, {nodes} clients x {model_mb:g} MiB: {error}") from None
    return {"startup_seconds": startup, "idle_rss_mib": idle, **runs_json(runs)}
