"""9 -> 10: why the link last refused a node it knows (revoked, expired), until it is admitted
again: its status in ``supernode list``."""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.add_column("nodes", sa.Column("refused_reason", sa.Text, nullable=False, server_default=""))
    op.add_column("nodes", sa.Column("refused_detail", sa.Text, nullable=False, server_default=""))
