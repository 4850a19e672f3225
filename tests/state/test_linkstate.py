"""The link's SQLite state: node lifecycle, sessions, messages, schema versioning."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.state.linkstate import LinkState, SessionSuperseded, StoredMessage, UnknownSession
from flwrmtls.state.schema import SCHEMA_VERSION

T0 = 1_800_000_000.0


def activate(state: LinkState, node_id: int | None = 42, now: float = T0) -> tuple[int, str]:
    return state.activate_node(
        node_id=node_id, identity="CN=node-1", organisation="Hospital A",
        auth_method="certificate", cert_fingerprint="ab" * 32, cert_not_after=T0 + 86400,
        peer_address="ipv4:127.0.0.1:1", now=now, heartbeat_interval=10,
    )  # fmt: skip


def test_online_follows_heartbeats(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "link.db")
    node_id, session = activate(state)
    assert [n.online for n in state.list_nodes(now=T0 + 1)] == [True]
    assert [n.online for n in state.list_nodes(now=T0 + 26)] == [False]  # 2.5 intervals
    state.heartbeat(node_id, session, now=T0 + 26, heartbeat_interval=10, peer_address="p")
    assert [n.online for n in state.list_nodes(now=T0 + 27)] == [True]
    state.deactivate_node(node_id, session, now=T0 + 28)
    assert [n.online for n in state.list_nodes(now=T0 + 28)] == [False]


def test_state_survives_reopening(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "link.db")
    node_id, session = activate(state)
    state.close()
    reopened = LinkState(tmp_path / "link.db")
    [node] = reopened.list_nodes(now=T0 + 1)
    assert (node.node_id, node.identity, node.organisation) == (42, "CN=node-1", "Hospital A")
    reopened.check_session(node_id, session)  # the session survives too


def test_newest_activation_supersedes_the_older_session(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "link.db")
    _, old = activate(state)
    _, new = activate(state, now=T0 + 1)
    state.check_session(42, new)
    with pytest.raises(SessionSuperseded):
        state.heartbeat(42, old, now=T0 + 2, heartbeat_interval=10, peer_address="p")
    with pytest.raises(UnknownSession):
        state.check_session(7, new)


def test_anonymous_nodes_get_fresh_ids_and_are_found_by_session(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "link.db")
    first, session_1 = activate(state, node_id=None)
    second, session_2 = activate(state, node_id=None)
    assert first != second
    assert state.node_of_session(session_1) == first
    assert state.node_of_session(session_2) == second
    with pytest.raises(UnknownSession):
        state.node_of_session("nope")


def test_messages_are_delivered_once_and_expire(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "link.db")

    def message(message_id: str, ttl: float) -> StoredMessage:
        return StoredMessage(message_id, 1, 0, 42, "train", "", b"payload", T0, ttl)

    state.store_messages([message("m1", 60), message("m2", 5)])
    pulled = state.pull_messages(42, now=T0 + 10, limit=10)
    assert [m.message_id for m in pulled] == ["m1"]  # m2 expired
    assert state.pull_messages(42, now=T0 + 11, limit=10) == []


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
