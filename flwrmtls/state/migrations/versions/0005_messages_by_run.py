"""4 -> 5: a run's replies in the order stored."""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("messages_by_run", "messages", ["run_id"])
