"""6 -> 7: audit entries in retention classes, each bounded on its own."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column(
        "audit", sa.Column("retention", sa.Text, nullable=False, server_default="refusal")
    )
    op.execute(
        """
        UPDATE audit SET retention = CASE
            WHEN method IN ('/flwrmtls.proto.Control/ListNodes',
                            '/flwrmtls.proto.Control/ListRuns',
                            '/flwrmtls.proto.Control/StreamLogs',
                            '/flwrmtls.proto.Control/ListAudit')
                THEN 'read'
            WHEN method = '/flwrmtls.proto.Fleet/ActivateNode' THEN 'admission'
            WHEN outcome = 'ok' AND method LIKE '/flwrmtls.proto.Control/%' THEN 'change'
            ELSE 'refusal' END
        """
    )
    op.create_index("audit_by_retention", "audit", ["retention", "seq"])
