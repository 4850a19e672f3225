"""The link's state on both engines: node lifecycle, sessions, messages, schema versioning."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypedDict

import pytest

from flwrmtls.errors import InputError
from flwrmtls.state.keytable import KeyRegistration
from flwrmtls.state.linkstate import LinkState, SessionSuperseded, UnknownSession
from flwrmtls.state.messagetable import MessageRow
from flwrmtls.state.runlifecycle import IllegalTransition, RunStatus
from flwrmtls.state.schema import SCHEMA_VERSION
from tests.state.engines import is_postgres
from tests.state.legacy_schema import MIGRATIONS

T0 = 1_800_000_000.0


def activate(state: LinkState, node_id: int | None = 42, now: float = T0) -> tuple[int, str]:
    return state.activate_node(
        node_id=node_id, identity="CN=node-1", organisation="Hospital A",
        auth_method="certificate", cert_fingerprint="ab" * 32, cert_not_after=T0 + 86400,
        peer_address="ipv4:127.0.0.1:1", now=now, heartbeat_interval=10,
    )  # fmt: skip


def test_online_follows_heartbeats(database: str) -> None:
    state = LinkState(database)
    node_id, session = activate(state)
    assert [n.status for n in state.list_nodes(now=T0 + 1)] == ["online"]
    assert [n.status for n in state.list_nodes(now=T0 + 26)] == ["offline"]  # 2.5 intervals
    state.heartbeat(node_id, session, now=T0 + 26, heartbeat_interval=10, peer_address="p")
    assert [n.status for n in state.list_nodes(now=T0 + 27)] == ["online"]
    state.deactivate_node(node_id, session, now=T0 + 28)
    assert [n.status for n in state.list_nodes(now=T0 + 28)] == ["offline"]


def test_state_survives_reopening(database: str) -> None:
    state = LinkState(database)
    node_id, session = activate(state)
    state.close()
    reopened = LinkState(database)
    [node] = reopened.list_nodes(now=T0 + 1)
    assert (node.node_id, node.identity, node.organisation) == (42, "CN=node-1", "Hospital A")
    reopened.check_session(node_id, session)  # the session survives too


def test_a_link_start_shows_restored_nodes_offline_until_they_call(database: str) -> None:
    # The link crashed at T0 + 1 with two nodes online (heartbeats promised them until T0 + 25);
    # the nodes may have died with it. Restarted at T0 + 5, it must not offer them to runs.
    state = LinkState(database)
    first, first_session = activate(state, node_id=1)
    second, second_session = activate(state, node_id=2)
    left, left_session = activate(state, node_id=3)
    state.deactivate_node(left, left_session, now=T0 + 0.5)  # left cleanly: offline since T0+0.5
    state.close()
    restarted = LinkState(database)
    assert [n.status for n in restarted.list_nodes(now=T0 + 5)] == ["online", "online", "offline"]
    assert restarted.link_started(now=T0 + 5) == 2
    assert {n.node_id: n.status for n in restarted.list_nodes(now=T0 + 5)} == {
        1: "offline", 2: "offline", 3: "offline",
    }  # fmt: skip
    assert restarted.online_nodes(now=T0 + 5) == []
    assert restarted.node_status([3], now=T0 + 5)[3][1] == T0 + 0.5  # "offline since" is kept
    # Their sessions stay valid: a heartbeat on the old session resumes a node, same node id.
    restarted.heartbeat(first, first_session, now=T0 + 6, heartbeat_interval=10, peer_address="p")
    assert restarted.online_nodes(now=T0 + 6) == [(first, "CN=node-1")]
    restarted.check_session(second, second_session)  # the silent one may still come back
    assert {n.node_id: n.status for n in restarted.list_nodes(now=T0 + 6)}[second] == "offline"


def test_a_link_that_died_is_taken_for_a_live_other_link_only_on_postgresql(
    database: str,
) -> None:
    """Every link joins as a replica; one SIGKILLed never leaves, and its row says it is alive
    until its lease passes. On SQLite no other link can exist: the link restarted at once
    must still treat the nodes as possibly dead with it (before: it took the dead link's row
    for a live link and left them online, and kept the files no run holds). On PostgreSQL that
    row may be a live replica serving those nodes (the control)."""
    state = LinkState(database)
    state.replicas.join(state.replica_id, "the link that dies", now=T0)
    activate(state, node_id=1)
    state.close()  # SIGKILL: no leave
    restarted = LinkState(database)
    restarted.replicas.join(restarted.replica_id, "restarted", now=T0 + 5)
    others = restarted.replicas.others_alive(restarted.replica_id, now=T0 + 5)
    if is_postgres(database):
        assert others == 1
        assert restarted.link_started(now=T0 + 5) == 0
        assert [n.status for n in restarted.list_nodes(now=T0 + 5)] == ["online"]
        assert restarted.replicas.others_alive(restarted.replica_id, now=T0 + 11) == 0
    else:
        assert others == 0
        assert restarted.link_started(now=T0 + 5) == 1
        assert [n.status for n in restarted.list_nodes(now=T0 + 5)] == ["offline"]


def test_newest_activation_supersedes_the_older_session(database: str) -> None:
    state = LinkState(database)
    _, old = activate(state)
    _, new = activate(state, now=T0 + 1)
    state.check_session(42, new)
    with pytest.raises(SessionSuperseded):
        state.heartbeat(42, old, now=T0 + 2, heartbeat_interval=10, peer_address="p")
    with pytest.raises(UnknownSession):
        state.check_session(7, new)


def test_anonymous_nodes_get_fresh_ids_and_are_found_by_session(database: str) -> None:
    state = LinkState(database)
    first, session_1 = activate(state, node_id=None)
    second, session_2 = activate(state, node_id=None)
    assert first != second
    assert state.node_of_session(session_1) == first
    assert state.node_of_session(session_2) == second
    with pytest.raises(UnknownSession):
        state.node_of_session("nope")


def test_messages_are_leased_until_acknowledged_and_expire(database: str) -> None:
    state = LinkState(database)
    messages = state.messages

    def message(message_id: str, ttl: float, node_id: int = 42) -> MessageRow:
        return MessageRow(message_id, 1, 0, node_id, "", T0, T0 + ttl, message_id.encode())

    messages.store([message("m1", 600), message("m2", 5), message("m3", 600)])
    messages.store([message("other", 600, node_id=43)])
    assert messages.deliver(42, now=T0 + 10, limit=10, lease=60) == [b"m1", b"m3"]  # m2 expired
    assert messages.deliver(42, now=T0 + 11, limit=10, lease=60) == []  # leased
    # Acknowledging: only what was handed out to this node counts.
    assert messages.acknowledge(42, ["m1", "other", "no-such"], now=T0 + 12) == 1
    assert messages.acknowledge(43, ["m3"], now=T0 + 12) == 0  # another node's message
    assert messages.acknowledge(43, ["other"], now=T0 + 12) == 0  # never handed out
    # The lease passes: what was not acknowledged is handed out again (m3), m1 never.
    assert messages.deliver(42, now=T0 + 71, limit=10, lease=60) == [b"m3"]
    # Activating again ends the leases at once.
    state.activate_node(
        node_id=42, identity="n", organisation="", auth_method="certificate",
        cert_fingerprint="", cert_not_after=0.0, peer_address="p", now=T0 + 72,
        heartbeat_interval=10,
    )  # fmt: skip
    assert messages.deliver(42, now=T0 + 73, limit=10, lease=60) == [b"m3"]
    # A message with a reply is never handed out again.
    messages.store([MessageRow("r3", 1, 42, 0, "m3", T0 + 74, T0 + 99, b"r3")])
    assert messages.deliver(42, now=T0 + 200, limit=10, lease=60) == []
    assert messages.sent_to(1, 42)
    assert not messages.sent_to(1, 44)
    assert messages.replies_to(["m1", "m3"]) == {"m3": b"r3"}


def test_run_lifecycle_follows_its_table_and_illegal_moves_change_nothing(
    database: str,
) -> None:
    runs = LinkState(database).runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="h", run_config_json='{"x": 1}', owner="o",
        now=T0,
    )  # fmt: skip
    runs.add_token(b"\x01" * 32, run_id, "serverapp")
    with pytest.raises(IllegalTransition):
        runs.transition(run_id, RunStatus.COMPLETED, "", T0 + 1)  # pending cannot complete
    assert runs.get(run_id).status is RunStatus.PENDING  # type: ignore[union-attr]
    runs.transition(run_id, RunStatus.RUNNING, "", T0 + 1)
    assert runs.token(b"\x01" * 32) is not None
    ended = runs.transition(run_id, RunStatus.FAILED, "boom", T0 + 2)
    assert (ended.status, ended.reason, ended.finished_at) == (RunStatus.FAILED, "boom", T0 + 2)
    assert runs.token(b"\x01" * 32) is None  # ending a run ends its tokens
    with pytest.raises(IllegalTransition):
        runs.transition(run_id, RunStatus.RUNNING, "", T0 + 3)  # ended runs never change
    assert [status for status, _, _ in runs.history(run_id)] == [
        RunStatus.PENDING, RunStatus.RUNNING, RunStatus.FAILED,
    ]  # fmt: skip
    assert ended.run_config == {"x": 1}
    runs.add_log(run_id, "link", "one", T0)
    runs.add_log(run_id, "link", "two", T0)
    assert [entry.text for entry in runs.logs_after(run_id, 0)] == ["one", "two"]


def test_schema_is_versioned_and_newer_databases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.db"
    LinkState(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(InputError, match="newer than this flwrmtls"):
        LinkState(path)


def test_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "link.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match=r"cannot open database .*--database"):
        LinkState(path)


def test_token_hashes_survive_reopening_and_end_with_their_run(database: str) -> None:
    state = LinkState(database)
    run_id = state.runs.create(
        app_name="a", app_version="1", bundle_hash="h", run_config_json="{}", owner="o", now=T0
    )
    state.runs.add_token(b"\x02" * 32, run_id, "serverapp")
    state.close()
    reopened = LinkState(database)
    assert reopened.runs.token(b"\x02" * 32) == (b"\x02" * 32, run_id, "serverapp")
    assert reopened.runs.token(b"\x03" * 32) is None  # control: an unknown hash
    reopened.runs.transition(run_id, RunStatus.STOPPED, "stopped", T0 + 1)
    assert reopened.runs.token(b"\x02" * 32) is None
    reopened.close()
    assert LinkState(database).runs.token(b"\x02" * 32) is None


def test_a_runs_replies_come_after_a_cursor_and_only_its_own(database: str) -> None:
    state = LinkState(database)
    messages = state.messages

    def row(message_id: str, run_id: int, dst: int, reply_to: str = "") -> MessageRow:
        src = 0 if not reply_to else 42
        return MessageRow(message_id, run_id, src, dst, reply_to, T0, T0 + 99, message_id.encode())

    messages.store([row("m1", 1, 42), row("m2", 1, 43), row("x1", 2, 42)])
    assert [m.message_id for m in messages.unanswered(1, now=T0)] == ["m1", "m2"]
    messages.store([row("r1", 1, 0, "m1"), row("y1", 2, 0, "x1")])
    first = messages.replies_after(1, 0)
    assert [proto for _, proto in first] == [b"r1"]  # run 2's reply is not run 1's
    assert [m.message_id for m in messages.unanswered(1, now=T0)] == ["m2"]
    cursor = first[-1][0]
    assert messages.replies_after(1, cursor) == []  # nothing new after the cursor
    messages.store([row("r2", 1, 0, "m2")])
    assert [proto for _, proto in messages.replies_after(1, cursor)] == [b"r2"]
    assert messages.unanswered(1, now=T0) == []
    # Expired messages are no longer awaited.
    messages.store([row("m3", 1, 44)])
    assert messages.unanswered(1, now=T0 + 100) == []


class _By(TypedDict):
    by: str
    now: float


def test_a_key_registered_before_bindings_migrates_unbound_and_can_be_bound(
    tmp_path: Path,
) -> None:
    """Schema v9 adds a key's certificate node; keys registered earlier are bound to none
    (a certificate+key link refuses them until an operator binds them)."""
    path = tmp_path / "link.db"
    with sqlite3.connect(path) as db:  # a database as the previous version left it
        for script in MIGRATIONS[:8]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 8")
        db.execute(
            "INSERT INTO node_keys VALUES (?, ?, ?, ?, ?, ?)",
            (b"old-key", 7, "SHA256:old", "registered", T0, "CN=admin"),
        )
    db.close()
    state = LinkState(path)
    assert state.keys.status(b"old-key") is KeyRegistration.REGISTERED
    assert state.keys.bound_node(7) is None
    by = _By(by="CN=admin", now=T0)
    assert state.keys.register(b"old-key", node_id=7, fingerprint="SHA256:old", **by) == (
        "already registered"
    )
    assert state.keys.register(
        b"old-key", node_id=7, fingerprint="SHA256:old", bound_node_id=42,
        bound_identity="CN=node-1", **by,
    ) == "rebound"  # fmt: skip
    assert state.keys.bound_node(7) == 42
    state.keys.unregister(7, **by)
    assert state.keys.bound_node(7) is None  # an unregistered key vouches for no node
    state.close()
    again = LinkState(path)
    assert again.keys.by_node(7) is not None
    assert again.keys.by_node(7).bound_identity == "CN=node-1"  # type: ignore[union-attr]
    assert again.keys.register(
        b"old-key", node_id=7, fingerprint="SHA256:old", bound_node_id=42,
        bound_identity="CN=node-1", **by,
    ) == "registered again"  # fmt: skip
    assert again.keys.bound_node(7) == 42
    again.close()
