"""A link killed at any statement of a change restarts consistent: real crashes, real processes.

Each test starts a real link process with ``FLWRMTLS_FAULT=<k>@<fragment>``
(:mod:`flwrmtls.state.faults`): the link sends itself SIGKILL right before the k-th statement
counted from the first one containing the fragment. The test tries every k in turn, from the
change's first statement until the crash comes after the change is whole, and each time:

* reads the database file as the crash left it (a fresh reader: only what was committed), and
  checks that the change is whole or absent, and that no row names a missing object file;
* starts the link again on the same database, without the hook, and checks through its real
  APIs that no ended run's token opens ServerAppIo, no ended run's message reaches a node, the
  run shows a final status, and nothing of it is left in the database or the object directory.

The run is started through the Control API; its ServerApp (tests/e2e/crash_app.py) hands its
token to the test and sends two messages, each with an object of its own, to a node that is
this test (a Fleet client with the node-1 certificate), which never pulls them before the
crash.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from flwrmtls.app.bundle import bundle_hash
from flwrmtls.app.bundling import build_bundle
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.keyvalues import values_to_proto
from flwrmtls.objects.store import CHUNK_SIZE, ObjectStore, object_id_of
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    fleet_pb2_grpc,
    objects_pb2,
)
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity

from .crash_app import write_crash_app
from .deployment import Deployment, free_port

MAX_STEPS = 30
"""More statements than any change here has: a loop that never sees the change whole fails."""
WAIT = 120.0
"""Generous: app processes start slowly on a loaded machine."""
RESTARTED = "link restarted while the run was active"


@dataclass(frozen=True)
class Snapshot:
    """What a fresh reader of the database and the object directory sees of run 1."""

    status: str
    history: list[str]
    tokens: int
    messages: int
    run_objects: set[str]
    node_objects: set[str]
    files: set[str]
    ended_line: bool
    """The run's log says how it ended."""


def _read(database: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(database)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def snapshot(database: Path, objects: Path, run_id: int = 1) -> Snapshot:
    def ids(query: str) -> set[str]:
        return {str(row[0]) for row in _read(database, query, run_id)}

    [(status,)] = _read(database, "SELECT status FROM runs WHERE run_id = ?", run_id)
    history = _read(database, "SELECT status FROM run_status_history WHERE run_id = ?", run_id)
    logs = _read(database, "SELECT text FROM run_logs WHERE run_id = ?", run_id)
    return Snapshot(
        status=str(status),
        history=[str(row[0]) for row in history],
        tokens=len(_read(database, "SELECT 1 FROM run_tokens WHERE run_id = ?", run_id)),
        messages=len(_read(database, "SELECT 1 FROM messages WHERE run_id = ?", run_id)),
        run_objects=ids("SELECT object_id FROM run_objects WHERE run_id = ?"),
        node_objects=ids("SELECT object_id FROM node_objects WHERE run_id = ?"),
        files=set(ObjectStore(objects).object_ids()),
        ended_line=any(str(text).startswith(f"run {run_id} stopped") for (text,) in logs),
    )


def wait_until(predicate: object, what: str, timeout: float = WAIT) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Site:
    """One link database, its fixed ports and its processes: crashed, then started again."""

    def __init__(self, pki: TestPki, directory: Path, app_dir: Path) -> None:
        self.pki = pki
        directory.mkdir(parents=True)
        self.deployment = Deployment(pki, directory)
        fleet, control, self.appio_port = free_port(), free_port(), free_port()
        args = self.deployment.link_args(f"127.0.0.1:{fleet}", f"127.0.0.1:{control}")
        args[args.index("--heartbeat-interval") + 1] = "30"  # the test node stays online
        args[args.index("--serverappio-api-address") + 1] = f"127.0.0.1:{self.appio_port}"
        self.args = args
        self.database = directory / "link.db"
        self.objects = Path(f"{self.database}.objects")
        self.token_file = directory / "token"
        self.bundle = build_bundle(app_dir)
        self.links: list[LinkProcess] = []

    def start_link(self, fault: str = "") -> LinkProcess:
        env = {**self.deployment.env, **({"FLWRMTLS_FAULT": fault} if fault else {})}
        link = LinkProcess(self.args, self.deployment.tmp / f"link-{len(self.links)}.log", env)
        self.links.append(link)
        link.start_and_wait()
        return link

    def stop(self) -> None:
        for link in self.links:
            if link.process is not None and link.process.poll() is None:
                link.stop()

    @contextmanager
    def control(self, link: LinkProcess) -> Iterator[control_pb2_grpc.ControlStub]:
        identity = load_tls_identity(*self.pki.paths("cli-operator"), cert_flag="c", key_flag="k")
        credentials = channel_credentials(self.pki.trust_bundle_path.read_bytes(), identity)
        with grpc.secure_channel(
            f"127.0.0.1:{link.control_port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            yield control_pb2_grpc.ControlStub(channel)

    def start_run(self, link: LinkProcess) -> tuple[int, str]:
        """Run 1 of the crash app; returns (run id, its token) once the app has it."""
        request = control_pb2.StartRunRequest(
            bundle=self.bundle,
            bundle_hash=bundle_hash(self.bundle),
            run_config=values_to_proto({"token-file": str(self.token_file)}),
        )
        with self.control(link) as control:
            run_id = int(control.StartRun(request, timeout=WAIT).run_id)
        wait_until(self.token_file.exists, f"the ServerApp's token:\n{link.log[-3000:]}")
        return run_id, self.token_file.read_text()

    def snapshot(self, run_id: int) -> Snapshot:
        return snapshot(self.database, self.objects, run_id)

    def stop_run(self, link: LinkProcess, run_id: int) -> None:
        """``flwrmtls stop``, as the hook kills the link during it (or just after)."""
        with self.control(link) as control:

            def stop_then_list() -> None:
                control.StopRun(control_pb2.StopRunRequest(run_id=run_id), timeout=WAIT)
                control.ListRuns(control_pb2.ListRunsRequest(), timeout=WAIT)

            with pytest.raises(grpc.RpcError):  # the link is dead by the second call
                stop_then_list()

    def status(self, link: LinkProcess, run_id: int) -> tuple[str, str]:
        with self.control(link) as control:
            [run] = control.ListRuns(control_pb2.ListRunsRequest(run_id=run_id), timeout=30).runs
        return run.status, run.reason

    def token_works(self, token: str) -> bool:
        """A real ServerAppIo call with ``token``: admitted, or refused as unauthenticated."""
        with grpc.insecure_channel(f"127.0.0.1:{self.appio_port}") as channel:
            stub = appio_pb2_grpc.ServerAppIoStub(channel)
            try:
                stub.GetRun(
                    appio_pb2.GetAppRunRequest(), metadata=((TOKEN_METADATA_KEY, token),),
                    timeout=30,
                )  # fmt: skip
            except grpc.RpcError as error:
                refused = error
            else:
                return True
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED, refused
        return False

    def node_receives(self, link: LinkProcess, run_id: int) -> tuple[int, list[int]]:
        """The test node activates and pulls: (messages it gets, runs it is told ended)."""
        chain, key = self.pki.paths("node-1")
        client, channel = node_client(
            link, root_certificates=self.pki.trust_bundle_path, chain=chain, key=key
        )
        with channel:
            session = client.activate()
            pulled = client.pull(session, wait=0.0, active_run_ids=[run_id])
        assert pulled is not None
        return len(pulled.messages), pulled.ended_run_ids

    def activate_node(self, link: LinkProcess) -> None:
        chain, key = self.pki.paths("node-1")
        client, channel = node_client(
            link, root_certificates=self.pki.trust_bundle_path, chain=chain, key=key
        )
        with channel:
            client.activate()

    def died_before(self, link: LinkProcess) -> str:
        """The statement before which the hook killed the link (it must have)."""
        assert link.process is not None
        code = link.wait_exit(WAIT)
        assert code == -9, f"the link exited with {code}, not SIGKILL:\n{link.log[-3000:]}"
        marker = "FLWRMTLS_FAULT: the link kills itself (SIGKILL) before: "
        [line] = [line for line in link.log.splitlines() if line.startswith(marker)]
        return line.removeprefix(marker)


def no_row_names_a_missing_file(state: Snapshot) -> None:
    assert state.run_objects <= state.files, "a row names an object file that is gone"
    assert state.node_objects <= state.files, "a node may read an object file that is gone"


def nothing_is_left(site: Site, link: LinkProcess, run_id: int, token: str) -> Snapshot:
    """After a restart: the ended run's token, messages, rows and files are gone."""
    assert not site.token_works(token)
    assert site.node_receives(link, run_id) == (0, [run_id])
    state = site.snapshot(run_id)
    assert (state.tokens, state.messages, state.run_objects, state.node_objects) == (
        0, 0, set(), set(),
    )  # fmt: skip
    assert state.files == set()  # no run is active: nothing may hold a file
    return state


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_crash_app(tmp_path / "app")


def test_a_crash_at_each_statement_of_a_runs_end_leaves_no_ended_run_with_a_token_or_message(
    pki: TestPki, tmp_path: Path, app_dir: Path
) -> None:
    """``flwrmtls stop``, the link killed before each statement of the run's end in turn.
    Before, the end committed the status and token first and the messages and object rows
    after: a crash between them left a stopped run whose messages a node still received after
    the restart, and whose object rows and files were never freed."""
    steps: list[str] = []
    for k in range(MAX_STEPS):
        site = Site(pki, tmp_path / f"k{k}", app_dir)
        try:
            link = site.start_link(fault=f"{k}@SET status = 'stopped'")
            site.activate_node(link)
            run_id, token = site.start_run(link)
            wait_until(
                lambda site=site, run_id=run_id: site.snapshot(run_id).messages == 2,
                "the ServerApp's two messages",
            )
            assert site.token_works(token)  # the control: a live run's token opens ServerAppIo
            site.stop_run(link, run_id)
            steps.append(site.died_before(link))
            crashed = site.snapshot(run_id)
            no_row_names_a_missing_file(crashed)
            if crashed.status == "running":  # the end had not committed: none of it is there
                assert crashed.history == ["pending", "running"]
                assert (crashed.tokens, crashed.messages) == (1, 2), steps[-1]
                assert len(crashed.run_objects) == 3  # the bundle and two arrays
                assert not crashed.ended_line
            else:  # it had: all of it is there
                assert crashed.status == "stopped", steps[-1]
                assert crashed.history == ["pending", "running", "stopped"]
                assert (crashed.tokens, crashed.messages) == (0, 0), steps[-1]
                assert (crashed.run_objects, crashed.node_objects) == (set(), set()), steps[-1]
                assert crashed.ended_line
            restarted = site.start_link()
            status, reason = site.status(restarted, run_id)
            if crashed.status == "running":
                assert (status, reason) == ("failed", RESTARTED)
            else:
                assert status == "stopped"
            nothing_is_left(site, restarted, run_id, token)
        finally:
            site.stop()
        if crashed.status == "stopped" and not crashed.files:
            break  # the crash came after the end was whole, files included
    else:
        pytest.fail(f"the run's end never completed within {MAX_STEPS} statements: {steps}")
    assert any(step.startswith("COMMIT") for step in steps), steps
    assert any("DELETE FROM messages" in step for step in steps), steps


def test_a_crash_at_each_statement_of_a_message_push_stores_the_batch_whole_or_not_at_all(
    pki: TestPki, tmp_path: Path, app_dir: Path
) -> None:
    """The ServerApp's push of two messages, the link killed before each statement of it in
    turn. Before, the rows that make the messages' objects the run's and readable by their
    node committed apart from the messages: a crash between them left a node allowed to read
    objects of a message it was never sent."""
    steps: list[str] = []
    for k in range(MAX_STEPS):
        site = Site(pki, tmp_path / f"k{k}", app_dir)
        try:
            link = site.start_link(fault=f"{k}@INSERT INTO messages")
            site.activate_node(link)
            run_id, token = site.start_run(link)
            steps.append(site.died_before(link))
            crashed = site.snapshot(run_id)
            no_row_names_a_missing_file(crashed)
            assert crashed.status == "running"
            assert crashed.messages in (0, 2), steps[-1]
            arrays = crashed.files - {bundle_hash(site.bundle)}
            assert len(arrays) == 2  # the ServerApp wrote them before it pushed
            if crashed.messages:
                assert crashed.run_objects >= arrays
                assert crashed.node_objects >= arrays
            else:
                assert crashed.run_objects == {bundle_hash(site.bundle)}, steps[-1]
                assert crashed.node_objects == set(), steps[-1]
            restarted = site.start_link()
            assert site.status(restarted, run_id) == ("failed", RESTARTED)
            nothing_is_left(site, restarted, run_id, token)
        finally:
            site.stop()
        if crashed.messages:
            break  # the crash came after the push committed
    else:
        pytest.fail(f"the push never committed within {MAX_STEPS} statements: {steps}")
    assert len(steps) >= 3, steps  # before each insert, and before the commit


def test_a_crash_at_each_statement_of_start_up_recovery_is_recovered_from_by_the_next_start(
    pki: TestPki, tmp_path: Path, app_dir: Path
) -> None:
    """A link killed (SIGKILL) with a run active, then started again and killed before each
    statement of its recovery in turn: the recovery is one transaction, so each start finds
    the database as the first crash left it, until one commits it whole."""
    site = Site(pki, tmp_path / "site", app_dir)
    steps: list[str] = []
    try:
        link = site.start_link()
        site.activate_node(link)
        run_id, token = site.start_run(link)
        wait_until(lambda: site.snapshot(run_id).messages == 2, "the ServerApp's two messages")
        assert link.process is not None
        link.process.kill()  # the first crash: the run was active
        link.wait_exit()
        for k in range(MAX_STEPS):
            env = {**site.deployment.env, "FLWRMTLS_FAULT": f"{k}@{RESTARTED}"}
            starting = LinkProcess(site.args, tmp_path / f"start-{k}.log", env)
            site.links.append(starting)
            starting.start()  # it dies before it serves
            steps.append(site.died_before(starting))
            crashed = site.snapshot(run_id)
            no_row_names_a_missing_file(crashed)
            if crashed.status == "running":
                assert (crashed.tokens, crashed.messages, len(crashed.run_objects)) == (1, 2, 3)
                continue
            assert crashed.status == "failed", steps[-1]
            assert (crashed.tokens, crashed.messages) == (0, 0), steps[-1]
            assert (crashed.run_objects, crashed.node_objects) == (set(), set()), steps[-1]
            break
        else:
            pytest.fail(f"recovery never committed within {MAX_STEPS} statements: {steps}")
        restarted = site.start_link()
        assert site.status(restarted, run_id) == ("failed", RESTARTED)
        nothing_is_left(site, restarted, run_id, token)
    finally:
        site.stop()
    assert any(step.startswith("COMMIT") for step in steps), steps


def test_an_upload_cut_by_a_crash_leaves_no_partial_file_after_the_restart(
    pki: TestPki, tmp_path: Path, app_dir: Path
) -> None:
    """A link killed (SIGKILL) while node-1 uploads an object. Before, the upload's partial
    file stayed in the object directory for good: no start-up looked at it."""
    site = Site(pki, tmp_path / "site", app_dir)
    data = os.urandom(3 * CHUNK_SIZE)
    object_id = object_id_of(data)
    store = ObjectStore(site.objects)
    hold = threading.Event()

    def partial_files() -> list[Path]:  # the store writes through ".incoming-*" files
        return [path for path in site.objects.iterdir() if path.name.startswith(".incoming-")]

    try:
        link = site.start_link()
        chain, key = pki.paths("node-1")
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        with channel:
            session = client.activate()

            def chunks() -> Iterator[objects_pb2.ObjectChunk]:
                yield objects_pb2.ObjectChunk(
                    session_id=session.session_id, object_id=object_id, total_size=len(data),
                    offset=0, data=data[:CHUNK_SIZE],
                )  # fmt: skip
                hold.wait(WAIT)  # the upload stays open until the link is gone

            upload = fleet_pb2_grpc.FleetStub(channel).PushObject.future(chunks(), timeout=WAIT)
            wait_until(
                lambda: any(path.stat().st_size for path in partial_files()),
                "the upload's first chunk on disk",
            )
            assert link.process is not None
            link.process.kill()
            link.wait_exit()
            hold.set()
            with pytest.raises(grpc.RpcError):
                upload.result()
        assert partial_files()  # what the crash left
        restarted = site.start_link()
        assert partial_files() == []
        assert "deleted 1 partial object writes" in restarted.log
        # Control: the same upload, whole, on the restarted link.
        client, channel = node_client(
            restarted, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        node_store = ObjectStore(tmp_path / "node-objects")
        node_store.put(data)
        with channel:
            client.send_objects(client.activate(), node_store, [object_id])
        assert store.has(object_id)
    finally:
        hold.set()
        site.stop()
