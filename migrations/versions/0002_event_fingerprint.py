"""Status events: a fingerprint column so a replayed webhook body records nothing new.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bridge_events", sa.Column("fingerprint", sa.String(64), nullable=True))
    op.create_index("ix_bridge_events_fingerprint", "bridge_events", ["fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_bridge_events_fingerprint", table_name="bridge_events")
    with op.batch_alter_table("bridge_events") as batch:
        batch.drop_column("fingerprint")
