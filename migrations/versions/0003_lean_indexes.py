"""Leaner indexes for the write path of /register.

The identifier indexes and the status fingerprint index skip NULLs (a
registration usually carries one or two of the four identifiers, and only
status events have a fingerprint), and the unused (kind, at) index of the
events goes. Every query that used them still can: a condition ``x = ...`` or
``x IN (...)`` implies ``x IS NOT NULL`` on SQLite and PostgreSQL alike. Each
registration now touches four to six fewer index pages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IDENTIFIERS = ("contact_id", "external_customer_id", "phone", "email")


def _not_null(column: str) -> dict:
    return {
        "sqlite_where": sa.text(f"{column} IS NOT NULL"),
        "postgresql_where": sa.text(f"{column} IS NOT NULL"),
    }


def upgrade() -> None:
    for column in IDENTIFIERS:
        name = f"ix_bridge_registrations_{column}"
        op.drop_index(name, table_name="bridge_registrations")
        op.create_index(name, "bridge_registrations", [column, "id"], **_not_null(column))
    op.drop_index("ix_bridge_events_fingerprint", table_name="bridge_events")
    op.create_index(
        "ix_bridge_events_fingerprint", "bridge_events", ["fingerprint"], **_not_null("fingerprint")
    )
    op.drop_index("ix_bridge_events_kind_at", table_name="bridge_events")


def downgrade() -> None:
    op.create_index("ix_bridge_events_kind_at", "bridge_events", ["kind", "at"])
    op.drop_index("ix_bridge_events_fingerprint", table_name="bridge_events")
    op.create_index("ix_bridge_events_fingerprint", "bridge_events", ["fingerprint"])
    for column in IDENTIFIERS:
        name = f"ix_bridge_registrations_{column}"
        op.drop_index(name, table_name="bridge_registrations")
        op.create_index(name, "bridge_registrations", [column, "id"])
