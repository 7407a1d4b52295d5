"""The support page's staff accounts and its failed-login throttle.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bridge_support_users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_login_at", UTCDateTime(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bridge_support_users"),
        sa.UniqueConstraint("name", name="uq_bridge_support_users_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "bridge_support_logins",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("wait_until", UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_bridge_support_logins"),
    )
    op.create_index(
        "ix_bridge_support_logins_last_attempt_at", "bridge_support_logins", ["last_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_bridge_support_logins_last_attempt_at", "bridge_support_logins")
    op.drop_table("bridge_support_logins")
    op.drop_table("bridge_support_users")
