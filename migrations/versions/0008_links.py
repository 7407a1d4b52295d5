"""Links and claim codes (``bridge_links``): made through ``POST /links``, ``bridge link``
and ``POST /links/claims``; a hash of each payload or code, never the value itself.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

IDENTIFIER_COLUMNS = ("contact_id", "external_customer_id", "phone", "email")


def upgrade() -> None:
    op.create_table(
        "bridge_links",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("external_customer_id", sa.String(255), nullable=True),
        sa.Column("phone", sa.String(15), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("token", sa.String(24), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bridge_links"),
    )
    op.create_index("uq_bridge_links_secret_hash", "bridge_links", ["secret_hash"], unique=True)
    for column in ("token", *IDENTIFIER_COLUMNS):
        op.create_index(
            f"ix_bridge_links_{column}",
            "bridge_links",
            [column],
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )


def downgrade() -> None:
    op.drop_table("bridge_links")
