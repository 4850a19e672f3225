"""The link's schema, versioned: Alembic revisions that run on SQLite and on PostgreSQL.

Rules:

* The schema is what the revisions in :mod:`flwrmtls.state.migrations` build, one revision per
  version (``0001`` ... ``SCHEMA_VERSION``); there is no second description of it.
* :func:`migrate` applies the revisions a database lacks, in order, each in one transaction
  with its new version number (a crash leaves the database at the last version completed);
  on PostgreSQL under the link's lock (:data:`flwrmtls.state.transaction.LOCK_KEY`), so two
  links starting at once migrate it once.
* The version is stored in Alembic's ``alembic_version`` table (so the ``alembic`` tool reads
  it) and, on SQLite, also in ``PRAGMA user_version``, which is where versions 1 to 11 kept it
  (a database of such a version has no ``alembic_version``: its user_version says where it
  stands, and an older flwrmtls reading a newer file refuses it).
* A database newer than this code (a version it has no revision for) is refused in one line,
  before anything is written to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from flwrmtls.errors import InputError
from flwrmtls.state.database import Database
from flwrmtls.state.transaction import LOCK_KEY

__all__ = ["SCHEMA_VERSION", "migrate", "schema_version"]

SCHEMA_VERSION = 16
"""The newest version this code knows (its last revision's number)."""

_SCRIPTS = Path(__file__).parent / "migrations"
log = logging.getLogger("flwrmtls.state")
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines say nothing to users


def schema_version(db: Database) -> int:
    """The database's version: 0 for an empty one."""
    if db.dialect == "sqlite":
        has_table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).first()
    else:
        has_table = db.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = 'alembic_version'"
        ).first()
    version = 0
    if has_table:
        row = db.execute("SELECT version_num FROM alembic_version").first()
        if row is not None:
            text = str(row[0])
            if not text.isdigit():
                raise InputError(
                    f"database {db.display} is at schema revision {text!r}, which this "
                    f"flwrmtls does not know: upgrade flwrmtls or use another --database"
                )
            version = int(text)
    if db.dialect == "sqlite":  # the larger of the two: either may be the newer writer's
        version = max(version, int(db.execute("PRAGMA user_version").scalar_one()))
    return version


def migrate(db: Database) -> None:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, or refuse a newer one (InputError)."""
    version = found = schema_version(db)
    _refuse_newer(db, version)
    if version == SCHEMA_VERSION:
        return
    revisions = {
        int(script.revision): script for script in ScriptDirectory(str(_SCRIPTS)).walk_revisions()
    }
    assert max(revisions) == SCHEMA_VERSION, "SCHEMA_VERSION must be the last revision"
    context = MigrationContext.configure(db.connection)
    while True:
        db.execute("BEGIN IMMEDIATE" if db.dialect == "sqlite" else "BEGIN")
        try:
            if db.dialect == "postgresql":
                db.execute("SELECT pg_advisory_xact_lock(:key)", {"key": LOCK_KEY})
            version = schema_version(db)  # another link may have moved it meanwhile
            _refuse_newer(db, version)
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            target = version + 1
            with Operations.context(context):
                revisions[target].module.upgrade()
            _record(db, target)
            db.execute("COMMIT")
            if found and target == SCHEMA_VERSION:
                log.info("database %s migrated from schema version %d to %d", db.display,
                         found, target)  # fmt: skip
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _refuse_newer(db: Database, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise InputError(
            f"database {db.display} has schema version {version}, newer than this flwrmtls "
            f"understands ({SCHEMA_VERSION}): upgrade flwrmtls or use another --database"
        )


def _record(db: Database, version: int) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS alembic_version ("
        "version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    db.execute("DELETE FROM alembic_version")
    db.execute("INSERT INTO alembic_version (version_num) VALUES (:v)", {"v": f"{version:04d}"})
    if db.dialect == "sqlite":
        db.execute(f"PRAGMA user_version = {int(version)}")
