"""What a run leaves when it ends, and what a link finds when it starts, through the real link.

* Ending a run is one transaction: a statement of it that fails (a SQLite trigger installed
  from a second connection, as in tests/state/test_transactions.py) leaves the run running
  with its token, messages and objects, and the call is answered with one clear line.
* A push of messages (ServerApp's or node's) is one transaction with the rows that make its
  objects the run's: a failed push leaves no such row, and a node's upload stays pending.
* At start-up, nothing of a run that is not active survives: a database in which an ended run
  still has a token, messages and object rows (what a link that crashed between a run's end
  and its cleanup left before) opens no ServerAppIo call, delivers nothing, and is emptied.

The real crashes at each statement are in tests/e2e/test_crash_points.py; the crash hook's
own rules are tested here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.app.bundle import bundle_hash
from flwrmtls.app.bundling import build_bundle
from flwrmtls.auth.keyformats import node_id_for_key, public_key_der
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, token_hash
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value
from flwrmtls.link.server import Link
from flwrmtls.objects.store import ObjectStore
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
)
from flwrmtls.state.database import Database
from flwrmtls.state.faults import CrashPoint, install, parse_crash_point
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.state.transaction import Transactions
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki

from ..e2e.crash_app import write_crash_app
from .engines import failing, fresh_read, raw_execute
from .test_transactions import T0, _operator_channel, _running_run

# --- the crash hook ---------------------------------------------------------------------------


def test_a_crash_point_is_k_at_a_fragment_and_nothing_else(tmp_path: Path) -> None:
    assert parse_crash_point("3@DELETE FROM messages") == CrashPoint("DELETE FROM messages", 3)
    assert parse_crash_point("0@a@b") == CrashPoint("a@b", 0)
    for bad in ("", "3", "@DELETE", "x@DELETE", "-1@DELETE", "3@"):
        with pytest.raises(InputError, match=r"FLWRMTLS_FAULT=.*test hook.*unset it"):
            parse_crash_point(bad)


def test_the_hook_dies_before_the_kth_statement_from_the_first_with_the_fragment(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    db.execute("CREATE TABLE t (x INTEGER)")
    died: list[str] = []

    class Died(Exception):
        pass

    def die(statement: str) -> None:
        died.append(statement)
        raise Died  # SQLite ignores it; the statement still runs (a real death would not)

    install(db, CrashPoint("VALUES (2)", 2), die)
    for x in range(1, 6):
        db.execute("INSERT INTO t VALUES (?)", (x,))  # statement 0 is x=2, statement 2 is x=4
    assert died == ["INSERT INTO t VALUES (4)"]
    install(db, CrashPoint("VALUES (7)", 0), die)  # 0: the fragment's own statement
    db.execute("INSERT INTO t VALUES (7)")
    assert died[-1] == "INSERT INTO t VALUES (7)"
    install(db, CrashPoint("never seen", 0), die)  # control: no statement, no death
    db.execute("INSERT INTO t VALUES (8)")
    assert len(died) == 2


def test_the_hook_counts_postgresql_statements_with_their_parameters(postgres_url: str) -> None:
    """On PostgreSQL the hook sees each statement before it is sent, then its parameters."""
    db = Database(postgres_url)
    db.execute("CREATE TABLE t (x INTEGER)")
    died: list[str] = []

    class Died(Exception):
        pass

    def die(statement: str) -> None:
        died.append(statement)
        raise Died

    install(db, CrashPoint("'x': 2", 2), die)
    for x in range(1, 6):
        with contextlib.suppress(Died):
            db.execute("INSERT INTO t VALUES (:x)", {"x": x})
    assert len(died) == 1
    assert "'x': 4" in died[0]  # statement 0 is x=2, statement 2 is x=4
    assert db.execute("SELECT x FROM t ORDER BY x").scalars().all() == [1, 2, 3, 5]
    db.close()


def test_a_cache_changed_in_a_block_is_forgotten_when_the_block_rolls_back(
    database: str,
) -> None:
    db = Database(database)
    db.execute("CREATE TABLE t (x INTEGER)")
    transaction = Transactions(db)
    cache: dict[str, int] = {}

    def add(*, fail: bool) -> None:
        with transaction():
            db.execute("INSERT INTO t VALUES (1)")
            cache["rows"] = 1
            transaction.after_rollback(cache.clear)
            if fail:
                raise RuntimeError("a later statement of the block failed")

    with pytest.raises(RuntimeError):
        add(fail=True)
    assert cache == {}
    add(fail=False)  # control: kept when the block commits
    assert cache == {"rows": 1}
    transaction.after_rollback(lambda: cache.clear())  # outside a block: never runs
    assert cache == {"rows": 1}


# --- a run's end is one transaction -----------------------------------------------------------


BUNDLE = "0" * 64
"""The bundle hash of ``_running_run``'s runs: each message's node may read it."""


def _stored_object(link: Link, data: bytes) -> str:
    return link.objects.store.put(data)


def _node(link: Link, pki: TestPki) -> tuple[fleet_pb2_grpc.FleetStub, str, int, grpc.Channel]:
    """node-1, active: (its Fleet stub, session id, node id, channel)."""
    chain, key = pki.paths("node-1")
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    session = client.activate()
    return fleet_pb2_grpc.FleetStub(channel), session.session_id, session.node_id, channel


def _push(link: Link, token: str, *messages: common_pb2.Message) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        appio_pb2_grpc.ServerAppIoStub(channel).PushMessages(
            appio_pb2.PushAppMessagesRequest(messages=messages),
            metadata=((TOKEN_METADATA_KEY, token),),
        )


def _token_works(link: Link, token: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        try:
            appio_pb2_grpc.ServerAppIoStub(channel).GetRun(
                appio_pb2.GetAppRunRequest(), metadata=((TOKEN_METADATA_KEY, token),)
            )
        except grpc.RpcError as error:
            refused = error
        else:
            return True
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED, refused
    return False


@pytest.mark.parametrize(
    "event",
    [
        "BEFORE DELETE ON messages",
        "BEFORE DELETE ON run_objects",
        "BEFORE DELETE ON node_objects",
        "BEFORE INSERT ON run_logs",
    ],
)
def test_a_stop_whose_cleanup_fails_leaves_the_run_running_whole(
    link: Link, pki: TestPki, event: str
) -> None:
    """As the machine: ``flwrmtls stop`` whose deletion of the run's messages, object rows or
    log line fails. Before, the run was already stopped (its token gone) while its messages
    stayed deliverable and its objects held; and the CLI was told UNKNOWN."""
    database = link.config.database
    run_id, token = _running_run(link.state)
    fleet, session_id, node_id, node_channel = _node(link, pki)
    object_id = _stored_object(link, b"the model")
    _push(link, token, common_pb2.Message(message_id="m1", dst_node_id=node_id,
                                          object_ids=[object_id]))  # fmt: skip
    with node_channel, _operator_channel(link, pki) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        stop = control_pb2.StopRunRequest(run_id=run_id)
        with failing(database, event), pytest.raises(grpc.RpcError) as failed:
            control.StopRun(stop)
        assert fresh_read(database, "SELECT status FROM runs") == [("running",)]
        assert fresh_read(database, "SELECT message_id FROM messages") == [("m1",)]
        assert set(fresh_read(database, "SELECT object_id FROM node_objects")) == {
            (object_id,), (BUNDLE,),
        }  # fmt: skip
        assert _token_works(link, token)
        assert failed.value.code() is grpc.StatusCode.INTERNAL  # a constraint: not retried
        assert failed.value.details() == (
            "the link's database failed: the disk gave way; see the link's log"
        )
        assert control.StopRun(stop).status == "stopped"  # control: whole
        assert not _token_works(link, token)
        assert fresh_read(database, "SELECT COUNT(*) FROM messages") == [(0,)]
        assert fresh_read(database, "SELECT COUNT(*) FROM run_objects") == [(0,)]
        assert fresh_read(database, "SELECT COUNT(*) FROM node_objects") == [(0,)]
        assert not link.objects.store.has(object_id)
        pulled = fleet.PullMessages(fleet_pb2.PullMessagesRequest(session_id=session_id))
        assert list(pulled.messages) == []


# --- pushes are one transaction ---------------------------------------------------------------


def test_a_serverapp_push_that_fails_leaves_no_object_row(link: Link, pki: TestPki) -> None:
    """As the machine: the push's message insert fails. Before, the rows that make the
    messages' objects the run's and readable by their node had committed already: the node
    could read the objects of a message it was never sent."""
    database = link.config.database
    _, token = _running_run(link.state)
    fleet, session_id, node_id, node_channel = _node(link, pki)
    object_id = _stored_object(link, b"weights for node-1")
    message = common_pb2.Message(message_id="m1", dst_node_id=node_id, object_ids=[object_id])
    with node_channel:
        with failing(database, "BEFORE INSERT ON messages"), pytest.raises(grpc.RpcError):
            _push(link, token, message)
        assert fresh_read(database, "SELECT object_id FROM node_objects") == []
        assert fresh_read(database, "SELECT object_id FROM run_objects") == []
        _push(link, token, message)  # control: whole
        assert set(fresh_read(database, "SELECT object_id FROM node_objects")) == {
            (object_id,), (BUNDLE,),
        }  # fmt: skip
        assert fresh_read(database, "SELECT object_id FROM run_objects") == [(object_id,)]
        pulled = fleet.PullMessages(fleet_pb2.PullMessagesRequest(session_id=session_id))
        assert [m.message_id for m in pulled.messages] == ["m1"]


def test_a_node_reply_push_that_fails_keeps_its_upload_pending_and_charges_no_run(
    link: Link, pki: TestPki, tmp_path: Path
) -> None:
    """As the machine: the reply's insert fails. Before, the upload had already left the
    node's pending uploads and been charged to the run, for a reply that was never stored."""
    database = link.config.database
    run_id, token = _running_run(link.state)
    fleet, session_id, node_id, node_channel = _node(link, pki)
    _push(link, token, common_pb2.Message(message_id="m1", dst_node_id=node_id))
    with node_channel:
        pulled = fleet.PullMessages(fleet_pb2.PullMessagesRequest(session_id=session_id))
        assert [m.message_id for m in pulled.messages] == ["m1"]
        store = ObjectStore(tmp_path / "node-objects")
        upload = store.put(b"the node's update")
        chain, key = pki.paths("node-1")
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        with channel:
            session = client.activate()
            client.send_objects(session, store, [upload])
            reply = common_pb2.Message(
                message_id="r1", src_node_id=node_id, reply_to_message_id="m1",
                object_ids=[upload],
            )  # fmt: skip
            push = fleet_pb2.PushMessagesRequest(session_id=session.session_id, messages=[reply])
            stub = fleet_pb2_grpc.FleetStub(channel)
            pending = link.objects.pending_bytes(node_id)
            assert pending > 0
            with failing(database, "BEFORE INSERT ON messages"), pytest.raises(grpc.RpcError):
                stub.PushMessages(push)
            assert fresh_read(database, "SELECT object_id FROM run_objects") == []
            assert link.objects.pending_bytes(node_id) == pending
            assert link.objects.run_bytes(run_id) == 0
            stub.PushMessages(push)  # control: the same reply, whole
        assert fresh_read(database, "SELECT object_id FROM run_objects") == [(upload,)]
        assert link.objects.pending_bytes(node_id) == 0


# --- start-up ---------------------------------------------------------------------------------


def test_a_restarted_link_leaves_an_ended_run_nothing_an_older_link_left_it(
    pki: TestPki, tmp_path: Path
) -> None:
    """A database in which a stopped run still has its ServerApp token, a message to node-1
    and its object's rows and file: what a link that crashed between a run's end and its
    cleanup left before. Before, the link loaded every stored token whatever its run's
    status, so the stopped run's ServerApp token was accepted, node-1 received the message,
    and the object was never freed."""
    database = tmp_path / "link.db"
    chain, key = pki.paths("server")
    config = mtls_config(
        database, server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    with running_link(config) as link:
        _, _, node_id, channel = _node(link, pki)
        channel.close()
    state = LinkState(database)
    old_run, old_token = _running_run(state)
    store = ObjectStore(Path(f"{database}.objects"))
    object_id = store.put(b"an ended run's model")
    proto = common_pb2.Message(message_id="old", run_id=old_run, dst_node_id=node_id,
                               object_ids=[object_id]).SerializeToString()  # fmt: skip
    state.messages.store([MessageRow("old", old_run, 0, node_id, "", T0, T0 + 10**9, proto)])
    state.objects.add(old_run, {object_id: 4096}, [(node_id, object_id)])
    state.close()
    with sqlite3.connect(database, isolation_level=None) as db:  # the end's first commit only
        db.execute("UPDATE runs SET status = 'stopped', finished_at = ?", (T0 + 2,))
        db.execute(
            "INSERT INTO run_status_history (run_id, status, reason, at) VALUES (?, ?, '', ?)",
            (old_run, RunStatus.STOPPED.value, T0 + 2),
        )
    with running_link(config) as link:
        assert not _token_works(link, old_token)
        fleet, session_id, _, channel = _node(link, pki)
        with channel:
            pulled = fleet.PullMessages(fleet_pb2.PullMessagesRequest(session_id=session_id))
            assert list(pulled.messages) == []
            for query in (
                "SELECT * FROM run_tokens", "SELECT * FROM messages",
                "SELECT * FROM run_objects", "SELECT * FROM node_objects",
            ):  # fmt: skip
                assert fresh_read(database, query) == [], query
            assert not store.has(object_id)
            # Control: a run started on this link has a working token and reaches node-1.
            new_run, new_token = _running_run(link.state)
            assert new_run != old_run
            assert _token_works(link, new_token)
            _push(link, new_token, common_pb2.Message(message_id="new", dst_node_id=node_id))
            pulled = fleet.PullMessages(fleet_pb2.PullMessagesRequest(session_id=session_id))
            assert [m.message_id for m in pulled.messages] == ["new"]
    assert fresh_read(database, "SELECT status FROM runs WHERE run_id = ?", old_run) == [
        ("stopped",)
    ]


def test_only_active_runs_tokens_are_loaded(database: str) -> None:
    state = LinkState(database)
    ended, ended_token = _running_run(state)
    active, active_token = _running_run(state)
    state.close()
    raw_execute(database, "UPDATE runs SET status = 'failed' WHERE run_id = ?", ended)
    reopened = LinkState(database)
    assert reopened.runs.token(token_hash(ended_token)) is None
    assert reopened.runs.token(token_hash(active_token)) == (
        token_hash(active_token), active, "serverapp",
    )  # fmt: skip
    assert reopened.forget_inactive_runs() == {"tokens": 1, "messages": 0, "object rows": 0}
    assert fresh_read(database, "SELECT run_id FROM run_tokens") == [(active,)]


# --- a run stopped while its ServerApp process starts ----------------------------------------


def test_a_run_stopped_while_its_process_starts_ends_stopped_and_its_process_with_it(
    pki: TestPki, tmp_path: Path
) -> None:
    """As a CLI user: ``flwrmtls stop`` of a run whose ServerApp process is being started.
    Before, StartRun failed with an unexplained error (the run could not become running) and
    the process it had started ran on unsupervised."""
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    bundle = build_bundle(write_crash_app(tmp_path / "app"))

    async def scenario() -> tuple[int, int]:
        link = Link(config)
        await link.start()
        try:
            runs = link.runs
            overrides: dict[str, Value] = {"token-file": str(tmp_path / "token")}
            # Run a holds the spare process (none is started while a run is active), so run b's
            # process is started from scratch: a window in which b is pending.
            a = await runs.start_run(bundle, bundle_hash(bundle), overrides, "role=operator")
            starting = asyncio.ensure_future(
                runs.start_run(bundle, bundle_hash(bundle), overrides, "role=operator")
            )
            while (b := link.state.runs.get(a + 1)) is None:
                await asyncio.sleep(0)
            assert b.status is RunStatus.PENDING
            assert await runs.stop_run(b.run_id, "stopped by the test") is RunStatus.STOPPED
            assert await starting == b.run_id  # before: IllegalTransition, and its process ran
            return a, b.run_id
        finally:
            await link.stop(0)

    before = _serverapp_children()
    a, b = asyncio.run(scenario())
    state = LinkState(config.database)
    assert [s for s, _, _ in state.runs.history(b)] == [RunStatus.PENDING, RunStatus.STOPPED]
    assert [s for s, _, _ in state.runs.history(a)] == [  # control: a ran, then the link stopped
        RunStatus.PENDING, RunStatus.RUNNING, RunStatus.FAILED,
    ]  # fmt: skip
    assert _serverapp_children() == before  # b's process did not outlive its run


def _serverapp_children() -> set[int]:
    """This process's children that are ServerApp processes and have not exited."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # it exited meanwhile
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and b"serverapp_process" in command:
            found.add(int(entry.name))
    return found


def test_registering_several_keys_registers_all_or_none(link: Link, pki: TestPki) -> None:
    """As the machine: ``flwrmtls supernode register a.pub b.pub`` whose second key's row
    fails. Before, the first key stayed registered while the CLI was told the call failed."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    second = node_id_for_key(keys[1])
    register = control_pb2.RegisterNodeKeysRequest(public_keys=[public_key_der(k) for k in keys])
    with _operator_channel(link, pki) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        with (
            failing(link.config.database, "BEFORE INSERT ON node_keys", f"NEW.node_id = {second}"),
            pytest.raises(grpc.RpcError),
        ):
            control.RegisterNodeKeys(register)
        assert fresh_read(link.config.database, "SELECT node_id FROM node_keys") == []
        assert [link.state.keys.status(public_key_der(k)) for k in keys] == [None, None]
        registered = control.RegisterNodeKeys(register).keys  # control: both
        assert [key.outcome for key in registered] == ["registered", "registered"]


def test_a_run_whose_end_cannot_be_recorded_loses_its_token_with_its_process(
    pki: TestPki, tmp_path: Path
) -> None:
    """As the machine: the ServerApp process dies while the database refuses the run's end.
    Before, the supervisor's task died with the error and the run's token kept opening
    ServerAppIo, with no process of the run left to hold it."""
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    bundle = build_bundle(write_crash_app(tmp_path / "app"))
    token_file = tmp_path / "token"

    async def token_works(link: Link, token: str) -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
            try:
                await appio_pb2_grpc.ServerAppIoStub(channel).GetRun(
                    appio_pb2.GetAppRunRequest(), metadata=((TOKEN_METADATA_KEY, token),)
                )
            except grpc.aio.AioRpcError as error:
                refused = error
            else:
                return True
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED, refused
        return False

    async def scenario() -> tuple[int, list[RunStatus]]:
        link = Link(config)
        await link.start()
        try:
            overrides: dict[str, Value] = {"token-file": str(token_file)}
            run_id = await link.runs.start_run(bundle, bundle_hash(bundle), overrides, "op")
            while not token_file.exists():
                await asyncio.sleep(0.05)
            token = token_file.read_text()
            assert await token_works(link, token)  # control: the live run's token
            with failing(config.database, "BEFORE UPDATE ON runs"):
                os.kill(int(Path(f"{token_file}.pid").read_text()), signal.SIGKILL)
                for _ in range(600):  # the supervisor sees the exit at once; bounded anyway
                    if not await token_works(link, token):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the token of a run whose process is gone still works")
                assert link.state.runs.get(run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
            assert await link.runs.stop_run(run_id, "the operator") is RunStatus.STOPPED
            return run_id, [s for s, _, _ in link.state.runs.history(run_id)]
        finally:
            await link.stop(0)

    _, history = asyncio.run(scenario())
    assert history == [RunStatus.PENDING, RunStatus.RUNNING, RunStatus.STOPPED]
