"""The audit table: newest first, filtered by identity, bounded, and added by migration 3 -> 4."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from flwrmtls.auth.audit import AuditRecord, Retention
from flwrmtls.state.audittable import AuditTable
from flwrmtls.state.database import Database
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.schema import SCHEMA_VERSION, migrate
from tests.state.legacy_schema import MIGRATIONS

T0 = 1_800_000_000.0
OPERATOR = "role=operator,CN=cli-operator"
USER = "role=user,CN=alice"


def record(n: int, identity: str = OPERATOR, outcome: str = "ok") -> AuditRecord:
    return AuditRecord(
        timestamp=T0 + n, identity=identity, auth_method="certificate",
        method="/flwrmtls.proto.Control/ListRuns", outcome=outcome, detail=f"#{n}",
        peer="ipv4:127.0.0.1:5000",
    )  # fmt: skip


def migrated(location: str) -> Database:
    db = Database(location)
    migrate(db)
    return db


def test_entries_newest_first_limited_and_by_identity(database: str) -> None:
    state = LinkState(database)
    for n in range(6):
        state.audit.record(record(n, USER if n % 2 else OPERATOR))
    newest = state.audit.entries(3)
    assert [e.record.detail for e in newest] == ["#5", "#4", "#3"]
    assert [e.seq for e in newest] == sorted((e.seq for e in newest), reverse=True)
    assert newest[0].record == record(5, USER)
    assert [e.record.detail for e in state.audit.entries(10, USER)] == ["#5", "#3", "#1"]
    assert state.audit.entries(10, "CN=nobody") == []
    state.close()
    # The trail survives a restart of the link.
    reopened = LinkState(database)
    assert len(reopened.audit.entries(100)) == 6
    reopened.close()


def test_the_trail_stays_bounded_and_keeps_the_newest(database: str) -> None:
    db = migrated(database)
    table = AuditTable(db, max_entries=5, prune_every=3)
    for n in range(20):
        table.record(record(n))
    kept = table.entries(100)
    # Pruned at every third record: at most max_entries + prune_every - 1 remain between prunes.
    assert 5 <= len(kept) <= 7
    assert [e.record.detail for e in kept[:5]] == ["#19", "#18", "#17", "#16", "#15"]
    table.prune()
    assert [e.record.detail for e in table.entries(100)] == ["#19", "#18", "#17", "#16", "#15"]
    # Control: without reaching the bound nothing is deleted.
    roomy = AuditTable(db, max_entries=1000, prune_every=1)
    roomy.record(record(20))
    assert len(roomy.entries(100)) == 6
    db.close()


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    db = Database(tmp_path / "link.db")
    with pytest.raises(ValueError, match="positive"):
        AuditTable(db, max_entries=0)


def test_migration_from_version_3_adds_the_table_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "link.db"
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    db.execute(
        "INSERT INTO nodes (node_id, identity, auth_method, created_at) "
        "VALUES (7, 'CN=node-1', 'certificate', 1.0)"
    )
    db.close()
    state = LinkState(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [n.node_id for n in state.list_nodes(now=T0, verbose=True)] == [7]
    state.audit.record(record(1))
    assert len(state.audit.entries(10)) == 1


def test_each_retention_class_is_bounded_on_its_own(database: str) -> None:
    """A flood of reads (or refusals) deletes older reads (refusals), never a change."""
    db = migrated(database)
    limits = dict.fromkeys(Retention, 5)
    table = AuditTable(db, limits=limits)
    change = replace(record(0), method="/flwrmtls.proto.Control/StartRun",
                     retention=Retention.CHANGE)  # fmt: skip
    table.record(change)
    for n in range(1, 200):
        table.record(replace(record(n), retention=Retention.READ))
        table.record(replace(record(n), outcome="revoked", retention=Retention.REFUSAL))
    table.prune()
    kept = table.entries(1000)
    assert [e.record for e in kept if e.record.retention is Retention.CHANGE] == [change]
    reads = [e.record.detail for e in kept if e.record.retention is Retention.READ]
    assert reads == ["#199", "#198", "#197", "#196", "#195"]
    assert sum(e.record.retention is Retention.REFUSAL for e in kept) == 5
    with pytest.raises(ValueError, match="every retention class"):
        AuditTable(db, limits={Retention.READ: 5})
    db.close()


def test_migration_from_version_5_sorts_the_existing_trail_into_classes(tmp_path: Path) -> None:
    path = tmp_path / "link.db"
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:5], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    rows = [
        ("/flwrmtls.proto.Control/StartRun", "ok"),
        ("/flwrmtls.proto.Control/StopRun", "PERMISSION_DENIED"),
        ("/flwrmtls.proto.Control/ListRuns", "ok"),
        ("/flwrmtls.proto.Fleet/ActivateNode", "ok"),
        ("/flwrmtls.proto.Fleet/Heartbeat", "revoked"),
    ]
    for method, outcome in rows:
        db.execute(
            "INSERT INTO audit (timestamp, identity, auth_method, method, outcome) "
            "VALUES (1.0, 'x', 'certificate', ?, ?)",
            (method, outcome),
        )
    db.close()
    state = LinkState(path)
    classes = [e.record.retention for e in reversed(state.audit.entries(10))]
    assert classes == [Retention.CHANGE, Retention.REFUSAL, Retention.READ, Retention.ADMISSION,
                       Retention.REFUSAL]  # fmt: skip
