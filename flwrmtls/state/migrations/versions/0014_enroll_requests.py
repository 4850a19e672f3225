"""13 -> 14: certificate requests made with join tokens (flwrmtls.state.enrolltable): at most
one per token; pending an operator's decision, issued (the chain kept for the node to
collect) or denied."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, TIME, serial

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    op.create_table(
        "enroll_requests",
        serial("request_id"),
        sa.Column(
            "token_id",
            sa.Text,
            sa.ForeignKey("enroll_tokens.token_id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("csr_der", BYTES, nullable=False),
        sa.Column("key_fingerprint", sa.Text, nullable=False),
        sa.Column("days", sa.Integer, nullable=False),
        sa.Column("peer", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("decided_at", TIME, nullable=True),
        sa.Column("decided_by", sa.Text, nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("chain_pem", BYTES, nullable=True),
        sa.Column("serial", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("enroll_requests")
