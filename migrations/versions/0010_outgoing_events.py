"""The outbox of the bots' custom events for Reteno (``POST /events``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE = "bridge_outgoing_events"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("token", sa.String(24), nullable=False),
        sa.Column("registration_id", BigId, nullable=True),
        sa.Column("event_type_key", sa.String(100), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("lease_id", sa.String(36), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["registration_id"],
            ["bridge_registrations.id"],
            name=f"fk_{TABLE}_registration_id_bridge_registrations",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
        sqlite_autoincrement=True,
    )
    op.create_index(f"ix_{TABLE}_token", TABLE, ["token", "id"])
    op.create_index(f"ix_{TABLE}_state", TABLE, ["state", "id"])
    op.create_index(
        f"ix_{TABLE}_outbox",
        TABLE,
        ["next_attempt_at", "id"],
        sqlite_where=sa.text("state = 'queued'"),
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index(f"ix_{TABLE}_registration_id", TABLE, ["registration_id"])


def downgrade() -> None:
    op.drop_table(TABLE)
