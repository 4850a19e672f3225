"""flwrmtls under the benchmarks: federations (mTLS or EC-key), ``flwrmtls run``, stamps, CPU.

Rules: federations come from ``flwrmtls.testing.federation`` (the same flags as the end-to-end
tests); a run is ``flwrmtls run APP --stream --run-config ...`` as a user types it, timed from
the command's start to its exit; the ServerApp's and ClientApps' own ``time.monotonic()``
stamps (``BENCH-SERVER`` / ``BENCH-CLIENT`` lines) split the time; a run is over for the
benchmark once the app processes it saw at the command's exit have exited (the link and each
node keep a spare app process ready, which is not the run's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwrmtls.testing.federation import (
    Federation,
    FederationError,
    NodeAuth,
    NodeSpec,
    numbered_nodes,
)
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import ManagedProcess, run_cli
from harness import BenchError, progress
from harness.procs import RssSampler, children, cpu_seconds, mib, rss_bytes, wait_gone
from harness.stats import spread
from harness.venvs import BENCH_DIR
from harness.workload import Run, check_model, runs_json, tile

__all__ = [
    "MODES",
    "Command",
    "copy_app",
    "federation",
    "issue_nodes",
    "measure_fedavg_cell",
    "measure_node_killed",
    "run_app",
]

APPS_DIR = BENCH_DIR / "apps"
MODES = {"mtls": NodeAuth.CERTIFICATE, "eckey": NodeAuth.KEY}
"""flwrmtls's two ways of admitting nodes, by the name the benchmarks give them."""
HEARTBEAT_INTERVAL = 5.0
RUN_TIMEOUT = 1800.0
IDLE_TIMEOUT = 60.0

_RUN_ID = re.compile(r"run (\d+) started:")
_SERVER = re.compile(r"BENCH-SERVER (\{.*\})")
_RUN_ID_IN_LOG = re.compile(r"run (\d+) ClientApp: BENCH-HOLD")
_CLOSED = re.compile(r"NODE_UNAVAILABLE: node .+? went offline \(its connection closed at [^)]*\)")


def copy_app(name: str, destination: Path) -> Path:
    """bench/apps/NAME copied to ``destination`` (caches left out), so nothing a run writes
    lands in the repository."""
    shutil.copytree(
        APPS_DIR / name,
        destination,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache"),
    )
    return destination


def issue_nodes(pki: TestPki, count: int) -> None:
    """node-1 and node-2 come with the test PKI; issue node-3 .. node-``count``."""
    for index in range(3, count + 1):
        pki.ca.issue_node(f"node-{index}", organization=f"Site {index}")


def federation(
    pki: TestPki,
    directory: Path,
    env: Mapping[str, str],
    nodes: int | Sequence[NodeSpec],
    *,
    mode: str = "mtls",
    stagger: float = 0.2,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    database: str | None = None,
    replicas: int = 1,
) -> Federation:
    """A federation (not started: use it as a context manager) of numbered nodes; with
    ``database`` (a postgresql:// URL) and ``replicas``, several links behind haproxy."""
    specs = numbered_nodes(nodes) if isinstance(nodes, int) else list(nodes)
    return Federation(
        pki,
        directory,
        env,
        specs,
        node_auth=MODES[mode],
        heartbeat_interval=heartbeat_interval,
        stagger=stagger,
        database=database,
        replicas=replicas,
    )


@dataclass(frozen=True)
class Command:
    """One ``flwrmtls run``: its run id, the ServerApp's stamps, when it started and exited."""

    run_id: int
    server: dict[str, Any]
    started: float
    exited: float
    output: str


def run_app(
    env: Mapping[str, str], app_dir: Path, run_config: Mapping[str, object], timeout: float
) -> Command:
    """``flwrmtls run APP --stream --run-config 'k=v ...'``, timed; raises :class:`BenchError`
    unless it exits 0 and prints its run id and the ServerApp's ``BENCH-SERVER`` line."""
    config = " ".join(f"{key}={_toml(value)}" for key, value in run_config.items())
    started = time.monotonic()
    result = run_cli(
        ["run", str(app_dir), "--stream", "--run-config", config], env=dict(env), timeout=timeout
    )
    exited = time.monotonic()
    output = result.stdout + result.stderr
    run_match = _RUN_ID.search(result.stdout)
    stamps = _SERVER.search(result.stdout)
    if result.returncode != 0 or run_match is None or stamps is None:
        raise BenchError(
            f"flwrmtls run exited with {result.returncode} (run config {config}; or printed no "
            f"run id or stamps)\n{output[-4000:]}"
        )
    return Command(int(run_match.group(1)), json.loads(stamps.group(1)), started, exited, output)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def client_stamps(
    nodes: Sequence[ManagedProcess], run_id: int, marker: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The ``marker`` lines the run's ClientApps printed (their nodes relay them into their
    logs), once ``count`` are there or ``timeout`` has passed."""
    pattern = re.compile(rf"run {run_id} ClientApp: {marker} (\{{.*\}})")
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(m.group(1)) for node in nodes for m in pattern.finditer(node.log)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def app_processes(fed: Federation) -> tuple[list[int], list[int]]:
    """(the link's and the nodes' children now, their parents). With several links, the
    nodes' only: the spare ServerApp of a link that did not run this one stays."""
    parents = [*(fed.link_pids() if fed.replicas == 1 else []), *fed.node_pids()]
    return [child for parent in parents for child in children(parent)], parents


def settle(fed: Federation, timeout: float = 15.0) -> list[int] | None:
    """Wait (bounded) until the link and every node have their spare app process ready, as
    they do when idle (docs/runs.md); return those processes, or None when some never came.
    A run then starts from the same state every time, and its app processes are exactly
    these spares: the next spares start only once the run has ended."""
    deadline = time.monotonic() + timeout
    while True:
        parents = [*(fed.link_pids() if fed.replicas == 1 else []), *fed.node_pids()]
        spares = {parent: children(parent) for parent in parents}
        if all(spares.values()):
            return [pid for found in spares.values() for pid in found]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


# --- CPU -----------------------------------------------------------------------------------


CPU_ROLES = ("cli", "link", "serverapp", "nodes", "clientapps")


class CpuMeter:
    """CPU seconds by role: the link and the nodes (their own), the app processes (their
    reaped children), the CLI (this process's reaped children)."""

    def __init__(self, link_pids: Sequence[int], node_pids: Sequence[int]) -> None:
        self._links = list(link_pids)
        self._nodes = list(node_pids)
        self._start = self._read()

    def _read(self) -> list[float]:
        links = [cpu_seconds(pid) for pid in self._links]
        link_own = sum(own for own, _ in links)
        link_children = sum(reaped for _, reaped in links)
        nodes = [cpu_seconds(pid) for pid in self._nodes]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return [
            usage.ru_utime + usage.ru_stime,
            link_own,
            link_children,
            sum(own for own, _ in nodes),
            sum(reaped for _, reaped in nodes),
        ]

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {
            role: after - before
            for role, before, after in zip(CPU_ROLES, self._start, end, strict=True)
        }


# --- the FedAvg workload -------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """Where one round's time goes, from the ServerApp's and ClientApps' stamps."""

    wait: float
    """Round start -> send_and_receive called (wait_for_nodes, sampling, messages)."""
    to_clients: float
    """-> the last ClientApp's handler entered (push, delivery, downloads, decoding)."""
    client_work: float
    """-> the last ClientApp's handler returned."""
    from_clients: float
    """-> send_and_receive returned (encode, push via node and link, pull, decode)."""
    aggregate: float
    """-> FedAvg's line (reply checks and the weighted average)."""


PHASES = ("wait", "to_clients", "client_work", "from_clients", "aggregate")


def phases(server: dict[str, Any], clients: Sequence[dict[str, Any]]) -> list[Phases]:
    ends: list[float] = server["round_ends"]
    waits: list[float] = server["waits"]
    exchanges: list[list[float]] = server["exchanges"]
    if not len(ends) == len(waits) == len(exchanges):
        raise BenchError(f"the ServerApp's stamps do not match its rounds: {server}")
    found = []
    previous = float(server["start"])
    for index, end in enumerate(ends):
        mine = [s for s in clients if int(s["round"]) == index + 1]
        if not mine:
            raise BenchError(f"no ClientApp stamps for round {index + 1}")
        sent, returned = exchanges[index]
        received = max(s["received"] for s in mine)
        replied = max(s["replied"] for s in mine)
        found.append(
            Phases(
                wait=sent - previous,
                to_clients=received - sent,
                client_work=replied - received,
                from_clients=returned - replied,
                aggregate=end - returned,
            )
        )
        previous = end
    return found


def measure_fedavg_run(
    fed: Federation, app_dir: Path, model_mb: float, *, rounds: int, distinct: bool
) -> Run:
    """One ``flwrmtls run`` of bench/apps/flwrmtls_fedavg on ``fed``, checked and timed."""
    link_pid, node_pid = fed.link_pid(), fed.node_pids()[0]
    spares = settle(fed)
    cpu = CpuMeter(fed.link_pids(), fed.node_pids())
    with RssSampler({"link": link_pid, "node": node_pid}) as sampler:
        command = run_app(
            fed.env,
            app_dir,
            {
                "rounds": rounds,
                "min-nodes": fed.size,
                "model-mb": float(model_mb),
                "distinct-updates": distinct,
            },
            RUN_TIMEOUT,
        )
        seen, parents = app_processes(fed)
        idle = wait_gone(seen if spares is None else spares, parents, IDLE_TIMEOUT)
        idle_at = time.monotonic()
    cpu_used = cpu.stop()
    if not idle:
        progress(f"  (app processes still alive {IDLE_TIMEOUT:.0f} s after the run)")
    server = command.server
    shift = check_model(server["probe"], fed.size, rounds, distinct=distinct)
    clients = client_stamps(fed.nodes, command.run_id, "BENCH-CLIENT", fed.size * rounds)
    split = phases(server, clients)
    bounds = [float(server["start"]), *map(float, server["round_ends"])]
    return Run(
        wall_seconds=command.exited - command.started,
        round_seconds=tile(bounds),
        start_seconds=bounds[0] - command.started,
        end_seconds=command.exited - bounds[-1],
        link_peak_rss_mib=sampler.tree_mib("link"),
        link_own_peak_rss_mib=sampler.own_mib("link"),
        node_peak_rss_mib=sampler.tree_mib("node"),
        node_own_peak_rss_mib=sampler.own_mib("node"),
        rss_samples=sampler.peaks.samples,
        idle_after_seconds=idle_at - command.exited,
        model_shift=shift,
        detail={
            "run_id": command.run_id,
            "phases": [asdict(p) for p in split],
            "cpu_seconds": cpu_used,
            "serverapp_peak_rss_mib": sampler.largest_descendant_mib("link"),
            "clientapp_peak_rss_mib": sampler.largest_descendant_mib("node"),
        },
    )


def measure_fedavg_cell(
    pki: TestPki,
    directory: Path,
    env: Mapping[str, str],
    app_dir: Path,
    *,
    nodes: int,
    model_mb: float,
    mode: str,
    rounds: int,
    repetitions: int,
    distinct: bool,
    stagger: float = 0.2,
    database: str | None = None,
    replicas: int = 1,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> dict[str, Any]:
    """A new federation for the cell, then ``repetitions`` checked runs on it (``database``,
    ``replicas``, ``heartbeat_interval``: see :func:`federation`)."""
    label = f"{mode}{'' if distinct else ' (identical replies)'}"
    fed = federation(
        pki, directory, env, nodes, mode=mode, stagger=stagger, database=database,
        replicas=replicas, heartbeat_interval=heartbeat_interval,
    )  # fmt: skip
    begun = time.monotonic()
    try:
        with fed:
            startup = time.monotonic() - begun
            idle = {
                "link": mib(rss_bytes(fed.link_pid())),
                "node": mib(rss_bytes(fed.node_pids()[0])),
            }
            progress(f"{label}: {nodes} nodes x {model_mb:g} MiB: online after {startup:.1f} s")
            runs = []
            for index in range(repetitions):
                run = measure_fedavg_run(fed, app_dir, model_mb, rounds=rounds, distinct=distinct)
                runs.append(run)
                progress(
                    f"  run {index + 1}/{repetitions}: {run.wall_seconds:.2f} s, rounds "
                    + " ".join(f"{s:.2f}" for s in run.round_seconds)
                )
    except FederationError as error:
        raise BenchError(f"{label}, {nodes} nodes x {model_mb:g} MiB: {error}") from None
    except BenchError as error:
        raise BenchError(
            f"{label}, {nodes} nodes x {model_mb:g} MiB: {error}\n{fed.log_tails()}"
        ) from None
    return {"startup_seconds": startup, "idle_rss_mib": idle, **runs_json(runs)}


# --- a node killed mid-round ---------------------------------------------------------------

KILL_ROUND = 2


def measure_node_killed(
    pki: TestPki,
    directory: Path,
    env: Mapping[str, str],
    app_dir: Path,
    *,
    nodes: int,
    model_mb: float,
    repetitions: int,
    stagger: float = 0.2,
) -> dict[str, Any]:
    """ "node killed mid-round": per repetition a new federation of ``nodes`` (heartbeat 5 s,
    so a lapse would take 12.5 s), a run of 2 FedAvg rounds needing ``nodes - 1`` replies,
    in which the last node's ClientApp holds its reply in round 2; once the others have
    answered, that node is killed (SIGKILL, no goodbye). The stall is the time from the kill
    to the end of round 2 (FedAvg's line, the ServerApp's stamp); the link's error reply for
    the dead node is checked to name the closed connection."""
    stalls: list[float] = []
    reasons: list[str] = []
    for index in range(repetitions):
        fed = federation(pki, directory / f"killed-{index}", env, nodes, stagger=stagger)
        with fed:
            stall, reason = _kill_mid_round(fed, app_dir, model_mb)
        stalls.append(stall)
        reasons.append(reason)
    return {
        "nodes": nodes, "model_mb": model_mb, "stall_seconds": stalls,
        "summary": spread(stalls), "reason": reasons[0] if reasons else "",
    }  # fmt: skip


def _kill_mid_round(fed: Federation, app_dir: Path, model_mb: float) -> tuple[float, str]:
    """One run on ``fed`` whose last node is killed mid-round: (stall, the error reply)."""
    victim, others = fed.nodes[-1], fed.nodes[:-1]
    assert victim.process is not None
    config = {
        "rounds": KILL_ROUND, "min-nodes": fed.size - 1, "model-mb": float(model_mb),
        "hold-node": fed.size, "hold-round": KILL_ROUND,
    }  # fmt: skip
    with ThreadPoolExecutor(1, "run") as pool:
        command = pool.submit(run_app, fed.env, app_dir, config, RUN_TIMEOUT)
        run_id = int(victim.wait_for(_RUN_ID_IN_LOG, timeout=RUN_TIMEOUT).group(1))
        answers = KILL_ROUND * len(others)
        if len(client_stamps(others, run_id, "BENCH-CLIENT", answers)) < answers:
            raise BenchError(f"the other nodes never answered round {KILL_ROUND}")
        orphans = children(victim.process.pid)
        killed = time.monotonic()
        victim.process.kill()
        try:
            result = command.result(RUN_TIMEOUT)
        finally:
            for pid in orphans:  # the ClientApp that held its reply, asleep
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    ends = result.server["round_ends"]
    if len(ends) != KILL_ROUND:
        raise BenchError(f"the run ended {len(ends)} rounds\n{result.output[-2000:]}")
    reason = _CLOSED.search(result.output)
    if reason is None:
        raise BenchError(
            "the dead node's error reply does not name its closed connection\n"
            + result.output[-3000:]
        )
    return float(ends[-1]) - killed, reason.group(0)
