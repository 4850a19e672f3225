"""A federation of real processes: a link, nodes and a CLI profile, for end-to-end tests and bench/.

Rules this module keeps:

* One place builds the flags: the end-to-end tests (``tests/e2e/deployment.py``) and the
  benchmarks (``bench/``) start links and nodes with the same argument lists, made here.
* Every process listens on 127.0.0.1 with a port the OS chooses, unless the caller names one;
  key material reaches a process only as a file path, never on its command line.
* The link always asks for client certificates and checks the CRL (``--ssl-require-client-auth
  --ssl-crl-file``); EC-key mode adds ``--node-auth key --enable-supernode-auth`` and registers
  every node's key (made by ``ssh-keygen``) before the nodes start.
* Waiting is bounded: :meth:`Federation.start` returns once every node is active and the
  Control API lists all of them online, or raises :class:`FederationError` with the logs' tails.
* A federation stops what it started, and only that: nodes first, all at once (so that each
  deactivates), then the link.
* Several links: with ``database`` a ``postgresql://`` URL and ``replicas`` N > 1, N link
  processes share that database and one object directory, haproxy in TCP mode stands in front
  (:mod:`flwrmtls.testing.balancer`), and the nodes and the CLI profile go through it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from flwrmtls.testing.balancer import BalancerUnavailable, Haproxy
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess, NodeProcess, run_cli

__all__ = [
    "Federation",
    "FederationError",
    "NodeAuth",
    "NodeSpec",
    "add_profile",
    "link_args",
    "list_nodes",
    "node_args",
    "numbered_nodes",
    "register_keys",
    "running_federation",
    "ssh_keygen",
]

LOOPBACK_ANY_PORT = "127.0.0.1:0"


class FederationError(RuntimeError):
    """A federation could not start or answer: a process exited, a CLI call failed, a wait
    timed out. The message carries what failed and the logs' tails."""


class NodeAuth(StrEnum):
    """How the link admits nodes."""

    CERTIFICATE = "certificate"
    """mTLS: a node presents its certificate (``--ssl-require-client-auth``)."""
    KEY = "key"
    """EC-key: a node signs every call with a registered key (``--node-auth key``)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name (its certificate's, or its key file's in EC-key mode) and the flags
    it gets besides the connection (``--node-config ...``)."""

    name: str
    extra: tuple[str, ...] = ()


def numbered_nodes(count: int) -> list[NodeSpec]:
    """``node-1`` .. ``node-<count>``, each with ``--node-config index=K``."""
    return [NodeSpec(f"node-{k}", ("--node-config", f"index={k}")) for k in range(1, count + 1)]


def link_args(
    pki: TestPki,
    database: Path | str,
    *,
    heartbeat_interval: float,
    fleet: str = LOOPBACK_ANY_PORT,
    control: str = LOOPBACK_ANY_PORT,
    node_auth: NodeAuth = NodeAuth.CERTIFICATE,
) -> list[str]:
    """The link's flags: mTLS with the CRL, its state in ``database``, every API on loopback."""
    chain, key = pki.paths("server")
    args = [
        "--fleet-api-address", fleet, "--control-api-address", control,
        "--database", str(database),
        "--ssl-require-client-auth", "--ssl-ca-certfile", str(pki.trust_bundle_path),
        "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
        "--ssl-crl-file", str(pki.crl_path), "--heartbeat-interval", f"{heartbeat_interval:g}",
        "--serverappio-api-address", LOOPBACK_ANY_PORT,
    ]  # fmt: skip
    if node_auth is NodeAuth.KEY:
        args += ["--node-auth", "key", "--enable-supernode-auth"]
    return args


def node_args(
    pki: TestPki,
    fleet_port: int,
    *,
    cert: str | None,
    ec_key: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """A node's flags: the link on loopback, the certificate called ``cert`` (None: none) and,
    with ``ec_key``, that private key file."""
    credentials: list[str] = []
    if cert is not None:
        chain, key = pki.paths(cert)
        credentials += ["--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key)]
    if ec_key is not None:
        credentials += ["--auth-supernode-private-key", str(ec_key)]
    return [
        "--superlink", f"127.0.0.1:{fleet_port}",
        "--root-certificates", str(pki.trust_bundle_path), *credentials,
        "--clientappio-api-address", LOOPBACK_ANY_PORT, *extra,
    ]  # fmt: skip


def ssh_keygen(directory: Path, name: str, bits: int = 384) -> Path:
    """An ECDSA key pair as ``ssh-keygen`` writes it: ``directory/name`` (0600) and ``.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", str(bits), "-N", "", "-f", str(key), "-C", name],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    key.chmod(0o600)
    return key


def _cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0) -> str:
    result = run_cli(list(args), env=dict(env), timeout=timeout)
    if result.returncode != 0:
        raise FederationError(f"flwrmtls {args[0]} {args[1]} failed: {result.stderr.strip()}")
    return result.stdout


def add_profile(
    pki: TestPki,
    control_port: int,
    env: Mapping[str, str],
    *,
    cert: str = "cli-operator",
    name: str = "test",
) -> None:
    """``flwrmtls config add NAME --default`` for the link's Control API, as ``cert``."""
    chain, key = pki.paths(cert)
    _cli(
        [
            "config", "add", name, "--address", f"127.0.0.1:{control_port}",
            "--root-certificates", str(pki.trust_bundle_path),
            "--client-certificate", str(chain), "--client-private-key", str(key), "--default",
        ],
        env,
    )  # fmt: skip


def register_keys(env: Mapping[str, str], public_keys: Sequence[Path]) -> list[dict[str, Any]]:
    """``flwrmtls supernode register`` every key in one call; what it printed as JSON."""
    out = _cli(["supernode", "register", *map(str, public_keys), "--format", "json"], env)
    registered: list[dict[str, Any]] = json.loads(out)
    if len(registered) != len(public_keys):
        raise FederationError(f"registered {len(registered)} of {len(public_keys)} keys: {out}")
    return registered


def list_nodes(env: Mapping[str, str], connection: str | None = None) -> list[dict[str, Any]]:
    """``flwrmtls supernode list [CONNECTION] --format json``."""
    args = ["supernode", "list", *([connection] if connection else []), "--format", "json"]
    nodes: list[dict[str, Any]] = json.loads(_cli(args, env))
    return nodes


class Federation:
    """A link, the nodes of ``nodes`` and a CLI profile, as processes with logs in
    ``directory``. Use it as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        pki: TestPki,
        directory: Path,
        env: Mapping[str, str],
        nodes: Sequence[NodeSpec],
        *,
        node_auth: NodeAuth = NodeAuth.CERTIFICATE,
        heartbeat_interval: float = 5.0,
        stagger: float = 0.0,
        link_extra: Sequence[str] = (),
        start_timeout: float = 180.0,
        database: str | None = None,
        replicas: int = 1,
    ) -> None:
        """``database``: a ``postgresql://`` URL (default: a SQLite file in ``directory``);
        ``replicas``: link processes on it, behind haproxy when more than one."""
        self.pki = pki
        self.directory = directory
        self.env = dict(env)
        self.specs = list(nodes)
        self.node_auth = node_auth
        self.heartbeat_interval = heartbeat_interval
        self.stagger = stagger
        self.link_extra = list(link_extra)
        self.start_timeout = start_timeout
        self.database = database
        self.replicas = replicas
        self.link: LinkProcess | None = None
        """The first link process (the only one unless ``replicas`` > 1)."""
        self.links: list[LinkProcess] = []
        self.balancer: Haproxy | None = None
        self.nodes: list[NodeProcess] = []

    @property
    def size(self) -> int:
        return len(self.specs)

    def key_path(self, spec: NodeSpec) -> Path:
        return self.directory / "keys" / spec.name

    def link_args(self) -> list[str]:
        shared = ["--objects-dir", str(self.directory / "objects")] if self.database else []
        return [
            *link_args(
                self.pki,
                self.database or self.directory / "link.db",
                heartbeat_interval=self.heartbeat_interval,
                node_auth=self.node_auth,
            ),
            *shared,
            *self.link_extra,
        ]

    def node_args(self, spec: NodeSpec, fleet_port: int) -> list[str]:
        if self.node_auth is NodeAuth.KEY:
            return node_args(
                self.pki, fleet_port, cert=None, ec_key=self.key_path(spec), extra=spec.extra
            )
        return node_args(self.pki, fleet_port, cert=spec.name, extra=spec.extra)

    def start(self) -> None:
        """Start the link, the profile and the nodes; return once all are online."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        try:
            for index in range(self.replicas):
                name = "link.log" if index == 0 else f"link-{index}.log"
                link = LinkProcess(self.link_args(), self.directory / name, self.env)
                self.links.append(link)
                self.link = self.link or link
                link.start_and_wait(timeout=60.0)
            fleet_port, control_port = self.links[0].fleet_port, self.links[0].control_port
            if self.replicas > 1:
                self.balancer = Haproxy(
                    {"fleet": [link.fleet_port for link in self.links],
                     "control": [link.control_port for link in self.links]},
                    self.directory / "haproxy",
                )  # fmt: skip
                fleet_port = self.balancer.ports["fleet"]
                control_port = self.balancer.ports["control"]
            self.fleet_port = fleet_port
            add_profile(self.pki, control_port, self.env)
            if self.node_auth is NodeAuth.KEY:
                keys = [ssh_keygen(self.key_path(s).parent, s.name) for s in self.specs]
                register_keys(self.env, [key.with_name(key.name + ".pub") for key in keys])
            for number, spec in enumerate(self.specs, start=1):
                node = NodeProcess(
                    self.node_args(spec, fleet_port),
                    self.directory / f"{spec.name}.log",
                    self.env,
                )
                self.nodes.append(node)
                node.start()
                if number < self.size and self.stagger > 0:
                    time.sleep(self.stagger)
            for node in self.nodes:
                node.wait_active(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_online(deadline)
        except (
            RuntimeError,
            TimeoutError,
            subprocess.SubprocessError,
            BalancerUnavailable,
        ) as error:
            raise FederationError(f"{error}\n{self.log_tails()}") from None

    def online(self) -> int:
        return sum(1 for node in list_nodes(self.env) if node.get("status") == "online")

    def wait_online(self, deadline: float) -> None:
        while (online := self.online()) < self.size:
            if time.monotonic() > deadline:
                raise FederationError(f"only {online} of {self.size} nodes online after start-up")
            time.sleep(0.2)

    def link_pid(self) -> int:
        if self.link is None or self.link.process is None:
            raise FederationError("the link has not started")
        return self.link.process.pid

    def link_pids(self) -> list[int]:
        """Every link process (replicas included)."""
        return [link.process.pid for link in self.links if link.process is not None]

    def node_pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes if node.process is not None]

    def stop(self) -> None:
        """SIGTERM every node at once (they deactivate), wait for them, then stop the link."""
        started = [node for node in self.nodes if node.process is not None]
        for node in started:
            node.signal_stop()
        if started:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop") as pool:
                list(pool.map(lambda node: node.stop(timeout=20.0), started))
        if self.balancer is not None:
            self.balancer.stop()
        for link in self.links:
            if link.process is not None:
                link.stop()

    def log_tails(self, nodes: int = 2) -> str:
        parts = []
        if self.link is not None:
            parts.append(f"--- link log:\n{self.link.log[-3000:]}")
        for node in self.nodes[:nodes]:
            parts.append(f"--- {node.log_path.name}:\n{node.log[-2000:]}")
        return "\n".join(parts)

    def __enter__(self) -> Federation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_federation(
    pki: TestPki,
    directory: Path,
    env: Mapping[str, str],
    nodes: Sequence[NodeSpec] | int,
    **options: Any,
) -> Iterator[Federation]:
    """A started :class:`Federation` (``nodes``: specs, or a count of numbered nodes), stopped
    when the block ends, however it ends."""
    specs = numbered_nodes(nodes) if isinstance(nodes, int) else list(nodes)
    with Federation(pki, directory, env, specs, **options) as federation:
        yield federation
