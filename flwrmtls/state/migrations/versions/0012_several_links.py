"""11 -> 12: several links on one database.

* ``messages.seq``: the order replies were stored in (PullReplies' cursor), one number that
  grows across every link process (SQLite's rowid was the cursor before; it is copied);
  ``run_status_history.seq``: the order of a run's transitions (the rowid's, likewise).
* ``link_replicas``: the link processes serving this database and until when each is alive
  (it renews that while it runs); ``runs.replica_id``: the one whose ServerApp runs the run.
* ``ec_nonces``: the EC-key signatures' nonces every link has accepted, until their window
  closes (a replay to another link is refused).
* ``pending_objects``: what a node uploaded that no reply names yet (its reply may reach
  another link).
"""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, ID, TIME

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.add_column("messages", sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column(
        "run_status_history",
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "sqlite":  # the order rows had (no rows elsewhere)
        op.execute("UPDATE messages SET seq = rowid")
        op.execute("UPDATE run_status_history SET seq = rowid")
    op.drop_index("messages_by_run", "messages")
    op.create_index("messages_by_run", "messages", ["run_id", "seq"])
    op.create_table(
        "link_replicas",
        sa.Column("replica_id", sa.Text, primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("alive_until", TIME, nullable=False),
    )
    op.add_column("runs", sa.Column("replica_id", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "ec_nonces",
        sa.Column("key_id", BYTES, primary_key=True),
        sa.Column("nonce", BYTES, primary_key=True),
        sa.Column("expires_at", TIME, nullable=False),
    )
    op.create_index("ec_nonces_by_expiry", "ec_nonces", ["expires_at"])
    op.create_table(
        "pending_objects",
        sa.Column("node_id", ID, primary_key=True, autoincrement=False),
        sa.Column("object_id", sa.Text, primary_key=True),
        sa.Column("charged_bytes", sa.BigInteger, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
    )
    op.create_index("pending_objects_by_object", "pending_objects", ["object_id"])
