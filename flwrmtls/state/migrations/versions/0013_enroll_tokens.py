"""12 -> 13: join tokens (flwrmtls.enroll.tokens): the SHA-256 of each secret, never the
secret; the identity each binds; when it was made, used or revoked."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES, TIME

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    op.create_table(
        "enroll_tokens",
        sa.Column("token_id", sa.Text, primary_key=True),
        sa.Column("secret_hash", BYTES, nullable=False),
        sa.Column("common_name", sa.Text, nullable=False),
        sa.Column("organization", sa.Text, nullable=False, server_default=""),
        sa.Column("organizational_unit", sa.Text, nullable=False, server_default=""),
        sa.Column("spiffe_id", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("used_at", TIME, nullable=True),
        sa.Column("revoked_at", TIME, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("enroll_tokens")
