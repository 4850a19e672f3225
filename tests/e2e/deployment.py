"""A deployment of real processes for end-to-end tests: link, nodes and CLI over mTLS.

The flags come from ``flwrmtls.testing.federation``, which the benchmarks (bench/) use too."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.testing import federation as shared
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import CliProcess, CliResult, LinkProcess, NodeProcess, run_cli

__all__ = ["Deployment", "deployment", "free_port"]


_SPAN = 10_000
"""How many ports below the kernel's ephemeral range :func:`free_port` draws from."""
_HANDED_OUT: set[int] = set()
"""Ports this process's :func:`free_port` returned: never returned twice (a test may ask for
several before any is bound)."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on now, for a process to listen on. Drawn below the kernel's
    ephemeral range, so no outgoing connection takes it before the process binds it, from
    this test process's own share of that span (``pytest -n``: the workers' shares do not
    overlap, so two never pick the same; a worker xdist starts again after a crash shares
    its predecessor's), and never one this process returned before."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    high = _ephemeral_low()
    share = list(range(max(1024, high - _SPAN) + index % workers, high, workers))
    for port in random.sample(share, min(len(share), 200)):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or waiting out a closed connection
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:  # a machine without such a span: any free port
        sock.bind(("127.0.0.1", 0))
        any_port: int = sock.getsockname()[1]
        return any_port


class Deployment:
    def __init__(self, pki: TestPki, tmp_path: Path) -> None:
        self.pki = pki
        self.tmp = tmp_path
        # Child processes get their own TMPDIR with a canary file in it: a process that
        # cleans up more than its own temporary files is caught by assert_tmp_intact().
        tmpdir = tmp_path / "tmpdir"
        tmpdir.mkdir(exist_ok=True)
        (tmpdir / "canary").write_text("must survive")
        self.env = {"FLWRMTLS_HOME": str(tmp_path / "home"), "TMPDIR": str(tmpdir)}
        self.processes: list[LinkProcess | NodeProcess | CliProcess] = []

    def link_args(self, fleet: str = "127.0.0.1:0", control: str = "127.0.0.1:0") -> list[str]:
        return shared.link_args(
            self.pki, self.tmp / "link.db", heartbeat_interval=1, fleet=fleet, control=control
        )

    def start_link(
        self, args: list[str] | None = None, name: str = "link", cwd: Path | None = None
    ) -> LinkProcess:
        link = LinkProcess(args or self.link_args(), self.tmp / f"{name}.log", self.env, cwd)
        self.processes.append(link)
        link.start_and_wait()
        return link

    def node(
        self,
        name: str,
        fleet_port: int,
        *extra: str,
        cert: str | None = None,
        ec_key: Path | None = None,
        cwd: Path | None = None,
    ) -> NodeProcess:
        """A node with the certificate ``cert`` (default: ``name``'s) and, with ``ec_key``,
        that EC private key; ``cert=""`` means no certificate."""
        args = shared.node_args(
            self.pki,
            fleet_port,
            cert=None if cert == "" else cert or name,
            ec_key=ec_key,
            extra=extra,
        )
        node = NodeProcess(args, self.tmp / f"{name}.log", self.env, cwd)
        self.processes.append(node)
        node.start()
        return node

    def profile(self, control_port: int, cert: str = "cli-operator", name: str = "test") -> None:
        shared.add_profile(self.pki, control_port, self.env, cert=cert, name=name)

    def list_nodes(self, connection: str = "test") -> list[dict[str, object]]:
        return shared.list_nodes(self.env, connection)

    def federation(
        self, node_configs: dict[str, str] | None = None
    ) -> tuple[LinkProcess, list[NodeProcess]]:
        """A link, nodes (name -> --node-config; default node-1 and node-2), and a profile."""
        configs = node_configs or {"node-1": "", "node-2": ""}
        link = self.start_link()
        nodes = [
            self.node(name, link.fleet_port, *(["--node-config", config] if config else []))
            for name, config in configs.items()
        ]
        for node in nodes:
            node.wait_active()
        self.profile(link.control_port)
        return link, nodes

    def cli(self, *args: str, timeout: float = 120.0, cwd: Path | None = None) -> CliResult:
        return run_cli(list(args), env=self.env, timeout=timeout, cwd=cwd)

    def cli_process(self, *args: str, name: str = "cli") -> CliProcess:
        """``flwrmtls ARGS`` started and left running; its output goes to ``<name>.log``."""
        cli = CliProcess(list(args), self.tmp / f"{name}.log", self.env)
        self.processes.append(cli)
        cli.start()
        return cli

    def assert_tmp_intact(self) -> None:
        assert (Path(self.env["TMPDIR"]) / "canary").read_text() == "must survive"

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.process is not None:
                process.stop()


@pytest.fixture
def deployment(fresh_pki: TestPki, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(fresh_pki, tmp_path)
    try:
        yield d
    finally:
        d.stop_all()
