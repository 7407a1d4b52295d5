"""Each registration's latest sign of life, and identity conflicts.

``last_seen_at``: the latest sign of life of the chat (existing rows: their
creation). ``conflict``: the registration was submitted while the chat had a
live registration under another identity (existing rows: false). A partial index
serves ``GET /tokens?conflict=true``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from bridge.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: a batch would rebuild the SQLite table and lose AUTOINCREMENT.
    op.add_column("bridge_registrations", sa.Column("last_seen_at", UTCDateTime(), nullable=True))
    op.add_column(
        "bridge_registrations",
        sa.Column("conflict", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute("UPDATE bridge_registrations SET last_seen_at = created_at")
    op.create_index(
        "ix_bridge_registrations_conflict",
        "bridge_registrations",
        ["id"],
        sqlite_where=sa.text("conflict"),
        postgresql_where=sa.text("conflict"),
    )


def downgrade() -> None:
    op.drop_index("ix_bridge_registrations_conflict", table_name="bridge_registrations")
    with op.batch_alter_table(
        "bridge_registrations", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("conflict")
        batch.drop_column("last_seen_at")
