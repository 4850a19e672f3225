"""7 -> 8: objects scoped to runs. run_objects: the runs each object belongs to and what it
counts for against the run's quota; node_objects: the objects each node may read. Objects
stored before this version belong to no run: the link reclaims them at start-up."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import ID

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "run_objects",
        sa.Column("run_id", ID, primary_key=True, autoincrement=False),
        sa.Column("object_id", sa.Text, primary_key=True),
        sa.Column("charged_bytes", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("run_objects_by_object", "run_objects", ["object_id"])
    op.create_table(
        "node_objects",
        sa.Column("node_id", ID, primary_key=True, autoincrement=False),
        sa.Column("object_id", sa.Text, primary_key=True),
        sa.Column("run_id", ID, primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.create_index("node_objects_by_run", "node_objects", ["run_id"])
