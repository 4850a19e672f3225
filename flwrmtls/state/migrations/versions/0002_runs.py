"""1 -> 2: runs, their status history, logs and app-process token hashes. Messages are stored
as their serialized proto (no run could exist before this version, so the old messages table
is empty and is replaced)."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, ID, TIME, serial

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "runs",
        serial("run_id"),
        sa.Column("app_name", sa.Text, nullable=False),
        sa.Column("app_version", sa.Text, nullable=False),
        sa.Column("bundle_hash", sa.Text, nullable=False),
        sa.Column("run_config_json", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=False, server_default="0"),
        sa.Column("finished_at", TIME, nullable=False, server_default="0"),
        sa.Column("result_json", sa.Text, nullable=False, server_default=""),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "run_status_history",
        sa.Column("run_id", ID, sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", TIME, nullable=False),
    )
    op.create_table(
        "run_logs",
        serial("seq"),
        sa.Column("run_id", ID, sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("timestamp", TIME, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("run_logs_by_run", "run_logs", ["run_id", "seq"])
    op.create_table(
        "run_tokens",
        sa.Column("token_hash", BYTES, primary_key=True),
        sa.Column("run_id", ID, sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
    )
    op.drop_table("messages")
    op.create_table(
        "messages",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("src_node_id", ID, nullable=False),
        sa.Column("dst_node_id", ID, nullable=False),
        sa.Column("reply_to_message_id", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("delivered_at", TIME),
        sa.Column("proto", BYTES, nullable=False),
    )
    op.create_index("messages_pending", "messages", ["dst_node_id", "delivered_at"])
    op.create_index("messages_replies", "messages", ["reply_to_message_id"])
