"""The outbox of calls other than registrations: mutes, unmutes and replays.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bridge_commands",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("token", sa.String(24), nullable=False),
        sa.Column("registration_id", BigId, nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("muted_until", UTCDateTime(), nullable=True),
        sa.Column("target_app", sa.String(64), nullable=True),
        sa.Column("target_url", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
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
            name="fk_bridge_commands_registration_id_bridge_registrations",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bridge_commands"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_bridge_commands_mute",
        "bridge_commands",
        ["token"],
        unique=True,
        sqlite_where=sa.text("action IN ('mute', 'unmute')"),
        postgresql_where=sa.text("action IN ('mute', 'unmute')"),
    )
    op.create_index(
        "uq_bridge_commands_replay",
        "bridge_commands",
        ["registration_id", "target_app", "target_url"],
        unique=True,
        sqlite_where=sa.text("action = 'replay'"),
        postgresql_where=sa.text("action = 'replay'"),
    )
    op.create_index(
        "ix_bridge_commands_outbox",
        "bridge_commands",
        ["next_attempt_at", "id"],
        sqlite_where=sa.text("state = 'queued'"),
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index("ix_bridge_commands_registration_id", "bridge_commands", ["registration_id"])


def downgrade() -> None:
    op.drop_table("bridge_commands")
