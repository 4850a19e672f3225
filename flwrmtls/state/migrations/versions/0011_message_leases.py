"""10 -> 11: at-least-once delivery. delivered_at is when a message was last handed out,
leased_until when that lease ends (NULL: not leased), acked_at when its node acknowledged it.
A message handed out before this version counts as acknowledged: that version handed each
message out once."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import TIME

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.add_column("messages", sa.Column("leased_until", TIME))
    op.add_column("messages", sa.Column("acked_at", TIME))
    op.execute("UPDATE messages SET acked_at = delivered_at WHERE delivered_at IS NOT NULL")
