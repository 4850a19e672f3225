"""8 -> 9: certificate+key: the certificate node an EC key was registered for (NULL: none)."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import ID

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.add_column("node_keys", sa.Column("bound_node_id", ID))
    op.add_column(
        "node_keys", sa.Column("bound_identity", sa.Text, nullable=False, server_default="")
    )
