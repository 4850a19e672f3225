"""2 -> 3: EC-key registration (CLI-managed mode) and unregistered nodes."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, ID, TIME

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "node_keys",
        sa.Column("public_key", BYTES, primary_key=True),
        sa.Column("node_id", ID, nullable=False, unique=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("changed_at", TIME, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
    )
    op.add_column("nodes", sa.Column("unregistered_at", TIME, nullable=False, server_default="0"))
