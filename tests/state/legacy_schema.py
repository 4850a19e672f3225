"""The SQLite schema as flwrmtls wrote it before Alembic (versions 1 to 11), to build databases
an older link left: the link must migrate them forward (tests/state/test_schema.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["MIGRATIONS", "legacy_database"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: nodes and their sessions; messages between the ServerApp side and nodes.
    """
    CREATE TABLE nodes (
        node_id          INTEGER PRIMARY KEY,
        identity         TEXT NOT NULL,
        organisation     TEXT NOT NULL DEFAULT '',
        auth_method      TEXT NOT NULL,
        cert_fingerprint TEXT NOT NULL DEFAULT '',
        cert_not_after   REAL NOT NULL DEFAULT 0,
        session_id       TEXT,
        online_until     REAL NOT NULL DEFAULT 0,
        last_seen        REAL NOT NULL DEFAULT 0,
        created_at       REAL NOT NULL,
        peer_address     TEXT NOT NULL DEFAULT ''
    );
    CREATE UNIQUE INDEX nodes_by_session ON nodes(session_id);
    CREATE TABLE messages (
        message_id          TEXT PRIMARY KEY,
        run_id              INTEGER NOT NULL,
        src_node_id         INTEGER NOT NULL,
        dst_node_id         INTEGER NOT NULL,
        message_type        TEXT NOT NULL,
        reply_to_message_id TEXT NOT NULL DEFAULT '',
        content             BLOB NOT NULL,
        created_at          REAL NOT NULL,
        ttl                 REAL NOT NULL,
        delivered_at        REAL
    );
    CREATE INDEX messages_pending ON messages(dst_node_id, delivered_at);
    """,
    # 1 -> 2: runs, their status history, logs and app-process token hashes. Messages are
    # stored as their serialized proto (no run could exist before this version, so the old
    # messages table is empty and is replaced).
    """
    CREATE TABLE runs (
        run_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        app_name        TEXT NOT NULL,
        app_version     TEXT NOT NULL,
        bundle_hash     TEXT NOT NULL,
        run_config_json TEXT NOT NULL,
        owner           TEXT NOT NULL,
        status          TEXT NOT NULL,
        reason          TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL,
        started_at      REAL NOT NULL DEFAULT 0,
        finished_at     REAL NOT NULL DEFAULT 0,
        result_json     TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE run_status_history (
        run_id INTEGER NOT NULL REFERENCES runs(run_id),
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        at     REAL NOT NULL
    );
    CREATE TABLE run_logs (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id    INTEGER NOT NULL REFERENCES runs(run_id),
        timestamp REAL NOT NULL,
        source    TEXT NOT NULL,
        text      TEXT NOT NULL
    );
    CREATE INDEX run_logs_by_run ON run_logs(run_id, seq);
    CREATE TABLE run_tokens (
        token_hash BLOB PRIMARY KEY,
        run_id     INTEGER NOT NULL REFERENCES runs(run_id),
        kind       TEXT NOT NULL
    );
    DROP TABLE messages;
    CREATE TABLE messages (
        message_id          TEXT PRIMARY KEY,
        run_id              INTEGER NOT NULL,
        src_node_id         INTEGER NOT NULL,
        dst_node_id         INTEGER NOT NULL,
        reply_to_message_id TEXT NOT NULL DEFAULT '',
        created_at          REAL NOT NULL,
        expires_at          REAL NOT NULL,
        delivered_at        REAL,
        proto               BLOB NOT NULL
    );
    CREATE INDEX messages_pending ON messages(dst_node_id, delivered_at);
    CREATE INDEX messages_replies ON messages(reply_to_message_id);
    """,
    # 2 -> 3: EC-key registration (CLI-managed mode) and unregistered nodes.
    """
    CREATE TABLE node_keys (
        public_key  BLOB PRIMARY KEY,
        node_id     INTEGER NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL,
        status      TEXT NOT NULL,
        changed_at  REAL NOT NULL,
        changed_by  TEXT NOT NULL
    );
    ALTER TABLE nodes ADD COLUMN unregistered_at REAL NOT NULL DEFAULT 0;
    """,
    # 3 -> 4: the audit trail (Control calls, node admissions, refusals).
    """
    CREATE TABLE audit (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp   REAL NOT NULL,
        identity    TEXT NOT NULL,
        auth_method TEXT NOT NULL,
        method      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '',
        peer        TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_identity ON audit(identity, seq);
    """,
    # 4 -> 5: a run's replies in the order stored (PullReplies' cursor is the rowid).
    """
    CREATE INDEX messages_by_run ON messages(run_id);
    """,
    # 5 -> 6: the CA key each certificate identity was last admitted under.
    """
    CREATE TABLE identity_pins (
        identity    TEXT PRIMARY KEY,
        anchor_key  TEXT NOT NULL,
        anchor_name TEXT NOT NULL,
        pinned_at   REAL NOT NULL
    );
    """,
    # 6 -> 7: audit entries in retention classes, each bounded on its own.
    """
    ALTER TABLE audit ADD COLUMN retention TEXT NOT NULL DEFAULT 'refusal';
    UPDATE audit SET retention = CASE
        WHEN method IN ('/flwrmtls.proto.Control/ListNodes', '/flwrmtls.proto.Control/ListRuns',
                        '/flwrmtls.proto.Control/StreamLogs', '/flwrmtls.proto.Control/ListAudit')
            THEN 'read'
        WHEN method = '/flwrmtls.proto.Fleet/ActivateNode' THEN 'admission'
        WHEN outcome = 'ok' AND method LIKE '/flwrmtls.proto.Control/%' THEN 'change'
        ELSE 'refusal' END;
    CREATE INDEX audit_by_retention ON audit(retention, seq);
    """,
    # 7 -> 8: objects scoped to runs. run_objects: the runs each object belongs to (pushed
    # for the run or named by its messages) and what it counts for against the run's quota
    # (its size, at least one charge unit); node_objects:
    # the objects each node may read (named by messages addressed to it, its runs' bundles,
    # its own replies'). Objects stored before this version belong to no run: the link
    # reclaims them at start-up.
    """
    CREATE TABLE run_objects (
        run_id        INTEGER NOT NULL,
        object_id     TEXT NOT NULL,
        charged_bytes INTEGER NOT NULL,
        PRIMARY KEY (run_id, object_id)
    ) WITHOUT ROWID;
    CREATE INDEX run_objects_by_object ON run_objects(object_id);
    CREATE TABLE node_objects (
        node_id   INTEGER NOT NULL,
        object_id TEXT NOT NULL,
        run_id    INTEGER NOT NULL,
        PRIMARY KEY (node_id, object_id, run_id)
    ) WITHOUT ROWID;
    CREATE INDEX node_objects_by_run ON node_objects(run_id);
    """,
    # 8 -> 9: certificate+key: the certificate node an EC key was registered for (NULL: none).
    """
    ALTER TABLE node_keys ADD COLUMN bound_node_id INTEGER;
    ALTER TABLE node_keys ADD COLUMN bound_identity TEXT NOT NULL DEFAULT '';
    """,
    # 9 -> 10: why the link last refused a node it knows (revoked, expired), until it is
    # admitted again: its status in `supernode list`.
    """
    ALTER TABLE nodes ADD COLUMN refused_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE nodes ADD COLUMN refused_detail TEXT NOT NULL DEFAULT '';
    """,
    # 10 -> 11: at-least-once delivery. delivered_at is when a message was last handed out,
    # leased_until when that lease ends (NULL: not leased), acked_at when its node acknowledged
    # it. A message handed out before this version counts as acknowledged: that version
    # handed each message out once.
    """
    ALTER TABLE messages ADD COLUMN leased_until REAL;
    ALTER TABLE messages ADD COLUMN acked_at REAL;
    UPDATE messages SET acked_at = delivered_at WHERE delivered_at IS NOT NULL;
    """,
)


def legacy_database(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite file at ``version`` as the hand-written migrations built it (autocommit)."""
    db = sqlite3.connect(path, isolation_level=None)
    for target, script in enumerate(MIGRATIONS[:version], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {target}; COMMIT;")
    return db
