"""14 -> 15: renewals of enrolled certificates (flwrmtls.enroll.renewal): who, old and new
serial, the new key, when, from where; by identity and time, for the renewal interval."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import TIME, serial

revision = "0015"
down_revision = "0014"


def upgrade() -> None:
    op.create_table(
        "enroll_renewals",
        serial("renewal_id"),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("old_serial", sa.Text, nullable=False),
        sa.Column("new_serial", sa.Text, nullable=False),
        sa.Column("key_fingerprint", sa.Text, nullable=False),
        sa.Column("renewed_at", TIME, nullable=False),
        sa.Column("peer", sa.Text, nullable=False),
    )
    op.create_index("enroll_renewals_by_identity", "enroll_renewals", ["identity", "renewed_at"])


def downgrade() -> None:
    op.drop_index("enroll_renewals_by_identity", "enroll_renewals")
    op.drop_table("enroll_renewals")
