"""A state change is whole or absent: a failure halfway leaves nothing of its first half.

Each test makes one statement of a multi-statement change fail, the way a full disk or an I/O
error would, with a trigger installed from a second connection (the link's own connection sees
it at once), then checks what a fresh reader of the database sees, and drops the trigger to
show the same change succeeds whole (the control). The state-level tests run on both engines.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.keyformats import node_id_for_key, public_key_der
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.link.server import Link
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2, control_pb2, control_pb2_grpc
from flwrmtls.state.database import Database, IntegrityError
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.state.transaction import Transactions
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from tests.state.engines import failing, fresh_read

T0 = 1_800_000_000.0


def test_with_connection_opens_no_transaction_in_autocommit_mode(tmp_path: Path) -> None:
    """Why the state layer has its own helper: on Python 3.11 with isolation_level=None,
    ``with connection:`` commits or rolls back only a transaction that is already open."""
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    db.execute("CREATE TABLE t (x INTEGER)")

    def two_statements(*, begin: bool) -> None:
        with db:
            if begin:
                db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (1)")
            assert db.in_transaction is begin
            raise RuntimeError("second statement failed")

    with pytest.raises(RuntimeError):
        two_statements(begin=False)
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]  # the first half stayed
    db.execute("DELETE FROM t")
    with pytest.raises(RuntimeError):
        two_statements(begin=True)  # control: an explicit BEGIN is rolled back
    assert db.execute("SELECT x FROM t").fetchall() == []
    # executemany in autocommit mode commits row by row.
    db.execute("CREATE TABLE u (x INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.IntegrityError):
        db.executemany("INSERT INTO u VALUES (?)", [(1,), (2,), (1,)])
    assert db.execute("SELECT x FROM u").fetchall() == [(1,), (2,)]


def test_the_helper_commits_whole_rolls_back_whole_and_defers_mirror_changes(
    database: str,
) -> None:
    db = Database(database)
    db.execute("CREATE TABLE t (x INTEGER)")
    transaction = Transactions(db)
    mirror: list[int] = []

    def nested(*, fail: bool) -> None:
        with transaction():
            db.execute("INSERT INTO t VALUES (1)")
            with transaction():  # a block inside another joins it
                db.execute("INSERT INTO t VALUES (2)")
                transaction.after_commit(lambda: mirror.append(2))
            assert mirror == []  # not before the outermost commit
            if fail:
                raise RuntimeError("the outer block fails after the inner one ended")

    with pytest.raises(RuntimeError):
        nested(fail=True)
    assert (db.execute("SELECT COUNT(*) FROM t").scalar_one(), mirror) == (0, [])
    assert not transaction.open
    nested(fail=False)  # control
    assert (db.execute("SELECT COUNT(*) FROM t").scalar_one(), mirror) == (2, [2])
    transaction.after_commit(lambda: mirror.append(3))  # outside a transaction: at once
    assert mirror == [2, 3]


def _running_run(state: LinkState) -> tuple[int, str]:
    run_id = state.runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
        owner="role=operator,CN=cli-operator", now=T0,
    )  # fmt: skip
    state.runs.transition(run_id, RunStatus.RUNNING, "", T0 + 1)
    token = new_token()
    state.runs.add_token(token_hash(token), run_id, "serverapp")
    return run_id, token


def _operator_channel(link: Link, pki: TestPki) -> grpc.Channel:
    identity = load_tls_identity(*pki.paths("cli-operator"), cert_flag="c", key_flag="k")
    return grpc.secure_channel(
        f"127.0.0.1:{link.control_port}",
        channel_credentials(pki.trust_bundle_path.read_bytes(), identity),
    )


def test_a_stop_that_fails_halfway_leaves_the_run_running_and_no_ended_run_has_a_live_token(
    link: Link, pki: TestPki
) -> None:
    """As the machine: ``flwrmtls stop`` whose last statement (ending the run's tokens) fails.
    Before, the run was already recorded as stopped while its token still opened ServerAppIo."""
    database = link.config.database
    run_id, token = _running_run(link.state)
    metadata = ((TOKEN_METADATA_KEY, token),)
    with (
        _operator_channel(link, pki) as control_channel,
        grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as appio_channel,
    ):
        control = control_pb2_grpc.ControlStub(control_channel)
        serverappio = appio_pb2_grpc.ServerAppIoStub(appio_channel)

        def status() -> str:
            [run] = control.ListRuns(control_pb2.ListRunsRequest(run_id=run_id)).runs
            return run.status

        def token_works() -> bool:
            try:
                serverappio.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata)
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    raise
                return False
            return True

        with failing(database, "BEFORE DELETE ON run_tokens"):
            with pytest.raises(grpc.RpcError):
                control.StopRun(control_pb2.StopRunRequest(run_id=run_id))
            assert status() == "running"
            assert fresh_read(database, "SELECT status FROM runs WHERE run_id = ?", run_id) == [
                ("running",)
            ]
            assert fresh_read(
                database, "SELECT status FROM run_status_history WHERE run_id = ?", run_id
            ) == [("pending",), ("running",)]
            assert token_works()  # the run did not end, so its token lives: consistent
        # Control: the same stop, whole.
        assert control.StopRun(control_pb2.StopRunRequest(run_id=run_id)).status == "stopped"
        assert status() == "stopped"
        assert not token_works()
    assert fresh_read(database, "SELECT COUNT(*) FROM run_tokens WHERE run_id = ?", run_id) == [
        (0,)
    ]


@pytest.mark.parametrize(
    "event",
    [
        "BEFORE UPDATE ON runs",
        "BEFORE INSERT ON run_status_history",
        "BEFORE DELETE ON run_tokens",
    ],
)
def test_a_transition_is_whole_or_absent(database: str, event: str) -> None:
    state = LinkState(database)
    run_id, token = _running_run(state)
    with failing(database, event), pytest.raises(IntegrityError):
        state.runs.transition(run_id, RunStatus.COMPLETED, "", T0 + 2)
    assert fresh_read(database, "SELECT status, finished_at FROM runs") == [("running", 0.0)]
    assert len(fresh_read(database, "SELECT * FROM run_status_history")) == 2
    assert len(fresh_read(database, "SELECT * FROM run_tokens")) == 1
    assert state.runs.token(token_hash(token)) is not None
    ended = state.runs.transition(run_id, RunStatus.COMPLETED, "", T0 + 2)  # control
    assert ended.status is RunStatus.COMPLETED
    assert state.runs.token(token_hash(token)) is None
    assert fresh_read(database, "SELECT * FROM run_tokens") == []


def test_a_run_is_created_whole_or_not_at_all(database: str) -> None:
    state = LinkState(database)
    with (
        failing(database, "BEFORE INSERT ON run_status_history"),
        pytest.raises(IntegrityError),
    ):
        state.runs.create(
            app_name="a", app_version="1", bundle_hash="h", run_config_json="{}", owner="o",
            now=T0,
        )  # fmt: skip
    assert fresh_read(database, "SELECT * FROM runs") == []
    assert state.runs.active() == []
    run_id = state.runs.create(
        app_name="a", app_version="1", bundle_hash="h", run_config_json="{}", owner="o", now=T0
    )  # control
    assert [status for status, _, _ in state.runs.history(run_id)] == [RunStatus.PENDING]


def _message(message_id: str, dst: int = 42) -> MessageRow:
    return MessageRow(message_id, 1, 0, dst, "", T0, T0 + 99, message_id.encode())


def test_messages_are_stored_all_or_none(database: str) -> None:
    state = LinkState(database)
    state.messages.store([_message("m0")])
    with pytest.raises(IntegrityError):
        state.messages.store([_message("m1"), _message("m0")])  # the second id is taken
    assert fresh_read(database, "SELECT message_id FROM messages") == [("m0",)]
    state.messages.store([_message("m1"), _message("m2")])  # control
    assert len(fresh_read(database, "SELECT message_id FROM messages")) == 3


def test_a_delivery_that_fails_halfway_loses_no_message(database: str) -> None:
    """As the machine: marking the second message delivered fails. Before, the first was
    marked delivered, the pull failed, and the node never received it."""
    state = LinkState(database)
    state.messages.store([_message("m1"), _message("m2")])
    with (
        failing(database, "BEFORE UPDATE ON messages", "NEW.message_id = 'm2'"),
        pytest.raises(IntegrityError),
    ):
        state.messages.deliver(42, now=T0 + 1, limit=10, lease=60)
    assert fresh_read(database, "SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL") == [
        (2,)
    ]
    assert state.messages.deliver(42, now=T0 + 2, limit=10, lease=60) == [b"m1", b"m2"]  # control


def _activate(state: LinkState, node_id: int) -> None:
    state.activate_node(
        node_id=node_id, identity=f"key-{node_id}", organisation="", auth_method="key",
        cert_fingerprint="", cert_not_after=0.0, peer_address="ipv4:127.0.0.1:1", now=T0,
        heartbeat_interval=10,
    )  # fmt: skip


def test_unregistering_and_registering_a_key_again_are_whole_or_absent(
    link: Link, pki: TestPki
) -> None:
    """As the machine, through ``flwrmtls supernode unregister`` and ``register``: the node
    row's update fails after the key's row changed. Before, the key was unregistered while
    the node kept its session (or registered again while the node stayed unregistered)."""
    database = link.config.database
    key = ec.generate_private_key(ec.SECP256R1())
    der, node_id = public_key_der(key), node_id_for_key(key)
    with _operator_channel(link, pki) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        register = control_pb2.RegisterNodeKeysRequest(public_keys=[der])
        [registered] = control.RegisterNodeKeys(register).keys
        assert registered.node_id == node_id
        _activate(link.state, node_id)
        unregister = control_pb2.UnregisterNodeRequest(node_id=node_id)
        with failing(database, "BEFORE UPDATE ON nodes"), pytest.raises(grpc.RpcError):
            control.UnregisterNode(unregister)
        assert fresh_read(database, "SELECT status FROM node_keys") == [("registered",)]
        assert link.state.keys.status(der) == "registered"
        assert not link.state.is_unregistered(node_id)
        control.UnregisterNode(unregister)  # control: whole
        assert fresh_read(database, "SELECT status FROM node_keys") == [("unregistered",)]
        assert link.state.is_unregistered(node_id)
        # Registering it again: the key's row and the node's readmission are one change.
        with failing(database, "BEFORE UPDATE ON nodes"), pytest.raises(grpc.RpcError):
            control.RegisterNodeKeys(register)
        assert fresh_read(database, "SELECT status FROM node_keys") == [("unregistered",)]
        assert link.state.keys.status(der) == "unregistered"
        assert link.state.is_unregistered(node_id)
        [again] = control.RegisterNodeKeys(register).keys  # control: whole
        assert again.outcome == "registered again"
        assert link.state.keys.status(der) == "registered"
        assert not link.state.is_unregistered(node_id)
        assert fresh_read(database, "SELECT unregistered_at FROM nodes") == [(0.0,)]


def test_a_serverapp_push_with_a_taken_message_id_stores_nothing(link: Link) -> None:
    """As a ServerApp: a push whose second message reuses an id. Before, the first message was
    stored (and delivered) while the call failed with an unexplained error."""
    _, token = _running_run(link.state)
    link.state.activate_node(
        node_id=42, identity="CN=n", organisation="", auth_method="certificate",
        cert_fingerprint="", cert_not_after=0.0, peer_address="p", now=T0, heartbeat_interval=10,
    )  # fmt: skip
    metadata = ((TOKEN_METADATA_KEY, token),)

    def push(*ids: str) -> None:
        request = appio_pb2.PushAppMessagesRequest(
            messages=[common_pb2.Message(message_id=i, dst_node_id=42) for i in ids]
        )
        stub.PushMessages(request, metadata=metadata)

    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        stub = appio_pb2_grpc.ServerAppIoStub(channel)
        push("m0")
        for ids in (("m1", "m0"), ("m2", "m2")):
            with pytest.raises(grpc.RpcError) as refused:
                push(*ids)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "already" in (refused.value.details() or "")
        assert fresh_read(link.config.database, "SELECT message_id FROM messages") == [("m0",)]
        push("m1", "m2")  # control
    assert len(fresh_read(link.config.database, "SELECT message_id FROM messages")) == 3
