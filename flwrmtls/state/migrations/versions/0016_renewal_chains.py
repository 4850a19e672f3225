"""15 -> 16: each renewal keeps the certificate chain it answered (flwrmtls.enroll.renewal), so
a node whose answer was lost, asking again with its previous certificate and the same new
key, is answered that chain again. Renewals kept before have none (NULL): those are not
answered again."""

import sqlalchemy as sa
from alembic import op

from flwrmtls.state.migrations.types import BYTES

revision = "0016"
down_revision = "0015"


def upgrade() -> None:
    op.add_column("enroll_renewals", sa.Column("chain_pem", BYTES, nullable=True))


def downgrade() -> None:
    op.drop_column("enroll_renewals", "chain_pem")
