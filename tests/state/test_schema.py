"""One schema on both engines: built by the Alembic revisions, migrated from what a link finds,
a newer one refused in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from flwrmtls.errors import InputError
from flwrmtls.state import schema
from flwrmtls.state.database import Database, parse_location
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.schema import SCHEMA_VERSION, migrate, schema_version
from tests.state.legacy_schema import MIGRATIONS, legacy_database

T0 = 1_800_000_000.0


def columns(location: str) -> dict[str, list[str]]:
    """Table -> its column names, as the engine reports them."""
    db = Database(location)
    inspector = sqlalchemy.inspect(db.connection)
    found = {
        table: sorted(column["name"] for column in inspector.get_columns(table))
        for table in inspector.get_table_names()
        if not table.startswith("sqlite_")
    }
    db.close()
    return found


def test_a_new_database_gets_every_revision_on_both_engines(database: str) -> None:
    LinkState(database).close()
    db = Database(database)
    assert schema_version(db) == SCHEMA_VERSION
    db.close()
    found = columns(database)
    assert "seq" in found["messages"]
    assert "replica_id" in found["runs"]
    assert {"link_replicas", "ec_nonces", "pending_objects", "alembic_version"} <= set(found)


ENROLLMENT_TABLES = {"enroll_tokens", "enroll_requests", "enroll_renewals"}
"""What the revisions after 12 (several links) add: enrollment."""


def test_the_revisions_after_several_links_go_down_and_up_again_on_both_engines(
    database: str,
) -> None:
    """Each revision after 12 has a downgrade that removes what its upgrade made: down to 12
    the enrollment tables are gone and the rest is as it was; migrating again restores them."""
    LinkState(database).close()
    full = columns(database)
    assert set(full) >= ENROLLMENT_TABLES
    db = Database(database)
    scripts = {
        int(script.revision): script
        for script in ScriptDirectory(
            str(Path(schema.__file__).parent / "migrations")
        ).walk_revisions()
    }
    context = MigrationContext.configure(db.connection)
    for version in range(SCHEMA_VERSION, 12, -1):
        db.execute("BEGIN")
        with Operations.context(context):
            scripts[version].module.downgrade()
        db.execute("UPDATE alembic_version SET version_num = :v", {"v": f"{version - 1:04d}"})
        if db.dialect == "sqlite":
            db.execute(f"PRAGMA user_version = {version - 1}")
        db.execute("COMMIT")
    assert schema_version(db) == 12
    db.close()
    down = columns(database)
    assert not ENROLLMENT_TABLES & set(down)
    assert {table: cols for table, cols in full.items() if table not in ENROLLMENT_TABLES} == down
    LinkState(database).close()
    assert columns(database) == full


def test_both_engines_hold_the_same_schema(tmp_path: Path, postgres_url: str) -> None:
    sqlite_path = str(tmp_path / "link.db")
    LinkState(sqlite_path).close()
    LinkState(postgres_url).close()
    assert columns(sqlite_path) == columns(postgres_url)


def test_a_database_of_the_last_hand_written_version_migrates_with_its_rows(
    tmp_path: Path,
) -> None:
    """A SQLite file a link of version 11 left (no Alembic table, PRAGMA user_version 11)
    moves to the new schema, its rows kept, the replies' order kept as their new cursor."""
    path = tmp_path / "link.db"
    old = legacy_database(path, len(MIGRATIONS))
    old.execute(
        "INSERT INTO nodes (node_id, identity, auth_method, created_at, session_id) "
        "VALUES (7, 'CN=node-1', 'certificate', 1.0, 'abc')"
    )
    old.execute(
        "INSERT INTO runs (app_name, app_version, bundle_hash, run_config_json, owner, status, "
        "created_at) VALUES ('a', '1', 'h', '{}', 'o', 'running', 1.0)"
    )
    old.execute("INSERT INTO run_status_history VALUES (1, 'pending', '', 1.0)")
    old.execute("INSERT INTO run_status_history VALUES (1, 'running', '', 1.0)")
    for message_id, reply_to in (("m1", ""), ("r1", "m1"), ("m2", ""), ("r2", "m2")):
        old.execute(
            "INSERT INTO messages (message_id, run_id, src_node_id, dst_node_id, "
            "reply_to_message_id, created_at, expires_at, proto) VALUES (?, 1, 0, 7, ?, 1, ?, ?)",
            (message_id, reply_to, T0, message_id.encode()),
        )
    old.close()
    state = LinkState(path)
    assert schema_version(state.db) == SCHEMA_VERSION
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    state.check_session(7, "abc")
    assert [status.value for status, _, _ in state.runs.history(1)] == ["pending", "running"]
    replies = state.messages.replies_after(1, 0)
    assert [proto for _, proto in replies] == [b"r1", b"r2"]
    assert [proto for _, proto in state.messages.replies_after(1, replies[0][0])] == [b"r2"]
    state.close()
    # Control: a fresh database has the same tables and columns as the migrated one.
    fresh = tmp_path / "fresh.db"
    LinkState(fresh).close()
    assert columns(str(path)) == columns(str(fresh))


@pytest.mark.parametrize("version", [1, 5, 8])
def test_older_hand_written_versions_migrate_too(tmp_path: Path, version: int) -> None:
    path = tmp_path / "link.db"
    legacy_database(path, version).close()
    LinkState(path).close()
    assert columns(str(path)) == columns(str(_fresh(tmp_path)))


def _fresh(tmp_path: Path) -> Path:
    fresh = tmp_path / "fresh.db"
    LinkState(fresh).close()
    return fresh


def test_a_newer_database_is_refused_on_both_engines_and_left_alone(database: str) -> None:
    LinkState(database).close()
    db = Database(database)
    db.execute("UPDATE alembic_version SET version_num = :v", {"v": f"{SCHEMA_VERSION + 1:04d}"})
    db.execute("CREATE TABLE from_the_future (x INTEGER)")
    db.close()
    with pytest.raises(
        InputError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this flwrmtls"
    ) as error:
        LinkState(database)
    assert "\n" not in str(error.value)
    db = Database(database)
    assert schema_version(db) == SCHEMA_VERSION + 1  # nothing was written
    db.close()


def test_a_newer_sqlite_file_of_a_version_without_alembic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.db"
    LinkState(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(InputError, match="newer than this flwrmtls"):
        LinkState(path)


def test_two_links_migrating_one_postgresql_database_at_once_migrate_it_once(
    postgres_url: str,
) -> None:
    first, second = Database(postgres_url), Database(postgres_url)
    second.execute("BEGIN")  # holds the link's lock while the first waits for it
    second.execute("SELECT pg_advisory_xact_lock(:k)", {"k": 0x666C77726D746C73})
    import threading

    done: list[BaseException | None] = []

    def run() -> None:
        try:
            migrate(first)
            done.append(None)
        except BaseException as error:
            done.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # it waits for the lock
    second.execute("COMMIT")
    thread.join(30)
    assert done == [None]
    migrate(second)  # finds it done: nothing to do
    assert schema_version(second) == SCHEMA_VERSION
    first.close()
    second.close()


def test_database_flag_takes_a_path_or_a_postgresql_url_and_nothing_else() -> None:
    assert parse_location("/var/lib/flwrmtls/link.db").drivername == "sqlite"
    url = parse_location("postgresql://flwr@db.example:5432/federation")
    assert (url.drivername, url.host, url.database) == ("postgresql+psycopg", "db.example",
                                                        "federation")  # fmt: skip
    for bad in ("mysql://u@h/db", "sqlite:///x.db", "http://example"):
        with pytest.raises(InputError, match=r"not a SQLite file or a postgresql:// URL"):
            parse_location(bad)
    with pytest.raises(InputError, match="names no database"):
        parse_location("postgresql://u@h:5432")


def test_a_postgresql_url_is_shown_without_its_password(postgres_url: str) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:s3cret@")
    db = Database(with_password)
    assert "s3cret" not in db.display
    db.close()


def test_an_unreachable_postgresql_server_is_one_line() -> None:
    with pytest.raises(InputError, match=r"cannot open database postgresql://u@127.0.0.1:1/db: "):
        LinkState("postgresql://u@127.0.0.1:1/db")
