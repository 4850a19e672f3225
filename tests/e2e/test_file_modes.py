"""What the link, a node and the CLI create to hold state is private to their OS account.

Real processes started under an ordinary umask (022), so nothing here passes by the test's
own umask: the link's database (and SQLite's -wal and -shm beside it), its object directory
and everything in it, the directory the database is in, the node's state directory and object
store, the app processes' unpacked bundles, ``$FLWRMTLS_HOME`` and config.toml. Then what an
older link left open is tightened, and an operator's directory is only warned about.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.state.linkstate import LinkState
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess, run_cli

from .deployment import Deployment
from .probe_app import write_probe_app

OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def open_paths(root: Path) -> list[str]:
    """``root`` and everything under it that group or others may access."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {mode(p):04o}" for p in paths if mode(p) & OPEN_TO_OTHERS]


@pytest.fixture
def ordinary_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("ordinary_umask")
def test_everything_the_link_node_and_cli_create_is_private(
    deployment: Deployment, tmp_path: Path
) -> None:
    state = tmp_path / "state"  # the link makes it
    database = state / "link.db"
    args = deployment.link_args()
    args[args.index("--database") + 1] = str(database)
    link = deployment.start_link(args)
    node = deployment.node("node-1", link.fleet_port)
    node.wait_active()
    deployment.profile(link.control_port)  # the CLI makes $FLWRMTLS_HOME and config.toml
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "--run-config",
        "min-train=1 min-available=1 rounds=1 sleep-on=all sleep-seconds=60",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    node.wait_for(r"run 1: ClientApp process \d+ started")
    tmpdir = Path(deployment.env["TMPDIR"])
    deadline = time.monotonic() + 60
    while len(list(tmpdir.glob("flwrmtls-app-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the ServerApp and the ClientApp unpack the bundle
    # The link: its database directory, database, -wal and -shm, objects (the bundle at least).
    assert mode(state) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(Path(f"{database}{suffix}")) == 0o600, suffix
    objects = Path(f"{database}.objects")
    assert any(path.is_file() for path in objects.rglob("*"))
    assert open_paths(state) == []
    # The node: its state directory, holding its object store (the bundle and the arrays).
    [node_state] = (Path(deployment.env["FLWRMTLS_HOME"]) / "supernode").iterdir()
    assert mode(node_state) == 0o700
    assert any(path.is_file() for path in (node_state / "objects").rglob("*"))
    assert open_paths(node_state) == []
    # The app processes: each unpacked bundle is in a directory only they can enter.
    unpacked = list(tmpdir.glob("flwrmtls-app-*"))
    assert len(unpacked) == 2
    assert [mode(directory) for directory in unpacked] == [0o700, 0o700]
    # The CLI.
    home = Path(deployment.env["FLWRMTLS_HOME"])
    assert (mode(home), mode(home / "config.toml")) == (0o700, 0o600)
    # Control: what nobody else needs to read keeps its usual mode (the test's own files).
    assert mode(tmpdir / "canary") == 0o644
    assert deployment.cli("stop", "1").returncode == 0


@pytest.mark.usefixtures("ordinary_umask")
def test_what_an_older_link_left_open_is_tightened_and_an_operators_directory_only_warned(
    fresh_pki: TestPki, tmp_path: Path
) -> None:
    # A database and object directory as a link before this change left them (umask 022).
    database = tmp_path / "link.db"
    LinkState(database).close()
    os.chmod(database, 0o644)
    objects = Path(f"{database}.objects")
    objects.mkdir(mode=0o755)
    chain, key = fresh_pki.paths("server")
    args = [
        "--ssl-ca-certfile", str(fresh_pki.trust_bundle_path), "--ssl-certfile", str(chain),
        "--ssl-keyfile", str(key), "--database", str(database),
        "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
        "--serverappio-api-address", "127.0.0.1:0",
    ]  # fmt: skip
    link = LinkProcess(args, tmp_path / "link.log")
    link.start_and_wait()
    try:
        assert (mode(database), mode(objects)) == (0o600, 0o700)
        assert f"{database} was open to group or others (mode 0644); set to 0600" in link.log
        assert f"{objects} was open to group or others (mode 0755); set to 0700" in link.log
    finally:
        assert link.stop() == 0
    # $FLWRMTLS_HOME, made by the operator with an open mode: warned about, not changed; by
    # the link when its database is there (the default), and by the CLI.
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    default = args[: args.index("--database")] + args[args.index("--database") + 2 :]
    link = LinkProcess(default, tmp_path / "link-home.log", {"FLWRMTLS_HOME": str(home)})
    link.start_and_wait()
    try:
        assert mode(home / "link.db") == 0o600
        assert f"{home} is open to group or others (mode 0755)" in link.log
    finally:
        assert link.stop() == 0
    assert mode(home) == 0o755
    added = run_cli(
        ["config", "add", "t", "--address", "127.0.0.1:1", "--insecure"],
        env={"FLWRMTLS_HOME": str(home)},
    )
    assert added.returncode == 0, added.stderr
    assert added.stderr.strip().splitlines() == [
        f"flwrmtls: warning: {home} is open to group or others (mode 0755) and holds "
        f"flwrmtls state: run chmod 700 {home}"
    ]
    assert (mode(home), mode(home / "config.toml")) == (0o755, 0o600)
    # Control: a private home gets no warning.
    os.chmod(home, 0o700)
    again = run_cli(["config", "use", "t"], env={"FLWRMTLS_HOME": str(home)})
    assert (again.returncode, again.stderr) == (0, "")
