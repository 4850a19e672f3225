"""5 -> 6: the CA key each certificate identity was last admitted under."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import TIME

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "identity_pins",
        sa.Column("identity", sa.Text, primary_key=True),
        sa.Column("anchor_key", sa.Text, nullable=False),
        sa.Column("anchor_name", sa.Text, nullable=False),
        sa.Column("pinned_at", TIME, nullable=False),
    )
