"""0 -> 1: nodes and their sessions; messages between the ServerApp side and nodes."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, ID, TIME

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", ID, primary_key=True, autoincrement=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("organisation", sa.Text, nullable=False, server_default=""),
        sa.Column("auth_method", sa.Text, nullable=False),
        sa.Column("cert_fingerprint", sa.Text, nullable=False, server_default=""),
        sa.Column("cert_not_after", TIME, nullable=False, server_default="0"),
        sa.Column("session_id", sa.Text),
        sa.Column("online_until", TIME, nullable=False, server_default="0"),
        sa.Column("last_seen", TIME, nullable=False, server_default="0"),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("peer_address", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("nodes_by_session", "nodes", ["session_id"], unique=True)
    op.create_table(
        "messages",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("src_node_id", ID, nullable=False),
        sa.Column("dst_node_id", ID, nullable=False),
        sa.Column("message_type", sa.Text, nullable=False),
        sa.Column("reply_to_message_id", sa.Text, nullable=False, server_default=""),
        sa.Column("content", BYTES, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("ttl", TIME, nullable=False),
        sa.Column("delivered_at", TIME),
    )
    op.create_index("messages_pending", "messages", ["dst_node_id", "delivered_at"])
