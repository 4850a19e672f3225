"""A link whose disk refuses its writes answers in one clear line and keeps serving reads.

The link is a real process; its disk fails for real: the test lowers the process's file size
limit (RLIMIT_FSIZE, with ``prlimit``) below its SQLite write-ahead log, so the kernel refuses
every write the database makes (SQLite reports "disk I/O error"), as a full or failing disk
would. The link's output goes through a pipe (a file would be refused too), read here.
"""

from __future__ import annotations

import re
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.errors import LinkUnreachable
from flwrmtls.objects.store import ObjectStore
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki

from .deployment import Deployment
from .probe_app import write_probe_app

_PORTS = re.compile(r"Fleet API on \S+ \(port (\d+)\), Control API on \S+ \(port (\d+)\)")
FAILED = "the link's database failed: disk I/O error; see the link's log"
OBJECT_FAILED = "the link's object storage failed: File too large; see the link's log"


class PipedLink:
    """A link process whose output is read through a pipe, line by line."""

    def __init__(self, args: list[str], env: dict[str, str], *, file_size: int = 0) -> None:
        """``file_size``: the process's file size limit from the start (0: none)."""

        def limit() -> None:
            if file_size:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flwrmtls.link.main", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True, preexec_fn=limit,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def wait_serving(self) -> None:
        match = self.wait_for(_PORTS)
        self.fleet_port, self.control_port = int(match[1]), int(match[2])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    @property
    def log(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        with self._seen:
            found = self._seen.wait_for(
                lambda: pattern.search("\n".join(self.lines)) or self.process.poll() is not None,
                timeout,
            )
            match = pattern.search("\n".join(self.lines))
        assert found, f"no {pattern.pattern!r}:\n{self.log[-3000:]}"
        assert match is not None, f"no {pattern.pattern!r}:\n{self.log[-3000:]}"
        return match

    def limit_file_size(self, size: int) -> None:
        """From now on the kernel refuses the link's writes past ``size`` bytes of a file."""
        _, hard = resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (size, hard))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)


@pytest.fixture
def piped(pki: TestPki, tmp_path: Path) -> Iterator[tuple[Deployment, PipedLink]]:
    deployment = Deployment(pki, tmp_path)
    link = PipedLink(deployment.link_args(), {**deployment.env, "PYTHONUNBUFFERED": "1"})
    try:
        link.wait_serving()
        deployment.profile(link.control_port)
        yield deployment, link
    finally:
        link.stop()


def _start_waiting_run(deployment: Deployment, tmp_path: Path) -> None:
    """A run that waits for two nodes, where only one comes: it stays running."""
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "--run-config", "min-available=2 min-train=2 wait-timeout=600"
    )
    assert started.returncode == 0, started.stderr


def test_a_link_whose_disk_fails_answers_stop_in_one_line_and_keeps_serving_reads(
    piped: tuple[Deployment, PipedLink], pki: TestPki, tmp_path: Path
) -> None:
    """As the machine: the disk refuses the link's writes while a run is active. Before,
    ``flwrmtls stop`` printed "answered UNKNOWN: Unexpected <class 'sqlite3.OperationalError'>"
    and the link logged a traceback."""
    deployment, link = piped
    _start_waiting_run(deployment, tmp_path)
    chain, key = pki.paths("node-1")
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    session = client.activate()  # before the disk fails
    upload = ObjectStore(tmp_path / "node-objects")
    object_id = upload.put(bytes(range(256)) * 64)  # 16 KiB: more than the disk takes now
    link.limit_file_size(4096)
    stop = deployment.cli("stop", "1")
    assert stop.returncode != 0
    assert "Traceback" not in stop.stderr
    [line] = stop.stderr.strip().splitlines()
    assert (
        line
        == f"flwrmtls: error: the link at 127.0.0.1:{link.control_port} is unavailable: {FAILED}"
    )
    # The link keeps serving what needs no write: the run is listed, still running.
    listed = deployment.cli("ls", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert '"status": "running"' in listed.stdout
    # A node is told the same, as UNAVAILABLE: it retries. Its object upload too.
    with pytest.raises(LinkUnreachable, match=re.escape(FAILED)):
        client.activate()
    with pytest.raises(LinkUnreachable, match=re.escape(OBJECT_FAILED)):
        client.send_objects(session, upload, [object_id])
    # The link said it once per call, with the call and the caller, without a traceback
    # (its log line may land just after the answer: waited for, not raced).
    link.wait_for(
        re.compile(
            r"during StopRun by role=operator,CN=cli-operator: disk I/O error "
            r"\(SQLITE_IOERR_WRITE\); answered UNAVAILABLE"
        )
    )
    link.wait_for(re.compile(r"object storage failed during PushObject by .*\(EFBIG\)"))
    failures = [line for line in link.log.splitlines() if " failed during " in line]
    assert sum("during StopRun" in line for line in failures) == 1
    assert "Traceback" not in link.log
    # Control: the same calls once the disk takes writes again.
    link.limit_file_size(resource.RLIM_INFINITY)
    with channel:
        client.send_objects(session, upload, [object_id])
    stopped = deployment.cli("stop", "1")
    assert stopped.returncode == 0, stopped.stderr
    assert "run 1 stopped" in stopped.stdout


def test_a_link_that_cannot_write_at_start_up_exits_in_one_line(
    pki: TestPki, tmp_path: Path
) -> None:
    """As the machine: the disk refuses writes when the link starts with a run to recover.
    Before, the link exited with a traceback."""
    deployment = Deployment(pki, tmp_path)
    database = tmp_path / "link.db"
    state = LinkState(database)  # a run that was active when the link last went away
    run_id = state.runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="op",
        now=1.0,
    )  # fmt: skip
    state.runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    state.close()
    env = {**deployment.env, "PYTHONUNBUFFERED": "1"}
    with sqlite3.connect(database) as reader:  # keeps -shm in place: the link can read
        reader.execute("SELECT 1 FROM runs").fetchall()
        link = PipedLink(deployment.link_args(), env, file_size=4096)
        assert link.process.wait(60) == 1
        link.stop()
    assert "Traceback" not in link.log
    [line] = [line for line in link.log.splitlines() if "error:" in line]
    assert line == (
        f"flwrmtls-superlink: error: the link's database {database} failed at start-up: disk "
        "I/O error: check the disk it is on (full? read-only?) and that no other process "
        "holds it"
    )
    # Control: the same start on a disk that takes writes recovers the run.
    link = PipedLink(deployment.link_args(), env)
    try:
        link.wait_serving()
    finally:
        link.stop()
    assert LinkState(database).runs.get(run_id).status is RunStatus.FAILED  # type: ignore[union-attr]


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still there."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def test_a_link_whose_disk_fails_stops_its_serverapps_when_it_stops(
    piped: tuple[Deployment, PipedLink], tmp_path: Path
) -> None:
    """As the machine: the disk refuses the link's writes and the operator stops the link.
    Recording "link stopped" for a run fails; the link must still stop the run's ServerApp
    (the next start marks the run "link restarted"), never leave it running, and say so in one
    line, not a traceback."""
    deployment, link = piped
    _start_waiting_run(deployment, tmp_path)
    for _ in range(600):
        listed = deployment.cli("ls", "--format", "json")
        if '"status": "running"' in listed.stdout:
            break
        time.sleep(0.1)
    serverapps = _children(link.process.pid)
    assert serverapps, "the run's ServerApp runs beside the link"
    link.limit_file_size(4096)
    link.stop()
    assert link.process.returncode is not None
    alive = {pid for pid in serverapps if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text()}  # fmt: skip
    assert alive == set(), f"ServerApp processes left running: {alive}\n{link.log[-2000:]}"
    assert "Traceback" not in link.log
