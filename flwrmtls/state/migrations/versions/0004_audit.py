"""3 -> 4: the audit trail (Control calls, node admissions, refusals)."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import TIME, serial

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "audit",
        serial("seq"),
        sa.Column("timestamp", TIME, nullable=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("auth_method", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("peer", sa.Text, nullable=False, server_default=""),
        sqlite_autoincrement=True,
    )
    op.create_index("audit_by_identity", "audit", ["identity", "seq"])
