"""The audit ledger: registrations (the outbox), events, shared state.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bridge_registrations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("token", sa.String(24), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("external_customer_id", sa.String(255), nullable=True),
        sa.Column("phone", sa.String(15), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("matched_by", sa.String(24), nullable=False),
        sa.Column("match_value", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("lease_id", sa.String(36), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("removed_at", UTCDateTime(), nullable=True),
        sa.Column("removal_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bridge_registrations"),
    )
    for column in ("token", "contact_id", "external_customer_id", "phone", "email", "state"):
        op.create_index(f"ix_bridge_registrations_{column}", "bridge_registrations", [column, "id"])
    op.create_index(
        "ix_bridge_registrations_outbox",
        "bridge_registrations",
        ["next_attempt_at", "id"],
        sqlite_where=sa.text("state = 'queued'"),
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index(
        "uq_bridge_registrations_live",
        "bridge_registrations",
        ["token", "matched_by", "match_value"],
        unique=True,
        sqlite_where=sa.text("state <> 'removed'"),
        postgresql_where=sa.text("state <> 'removed'"),
    )

    op.create_table(
        "bridge_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("registration_id", BigId, nullable=True),
        sa.Column("token", sa.String(24), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["registration_id"],
            ["bridge_registrations.id"],
            name="fk_bridge_events_registration_id_bridge_registrations",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bridge_events"),
    )
    op.create_index("ix_bridge_events_token", "bridge_events", ["token", "id"])
    op.create_index("ix_bridge_events_registration_id", "bridge_events", ["registration_id"])
    op.create_index("ix_bridge_events_kind_at", "bridge_events", ["kind", "at"])

    op.create_table(
        "bridge_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_bridge_state"),
    )


def downgrade() -> None:
    op.drop_table("bridge_state")
    op.drop_table("bridge_events")
    op.drop_table("bridge_registrations")
