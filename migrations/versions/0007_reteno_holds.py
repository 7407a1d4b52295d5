"""Whether Reteno still holds each registration's token (``reteno_holds``).

Existing rows: true for a live registration that was delivered, false for every other.
A removed registration cannot tell here whether Reteno dropped its token (a later
Forbidden status may have named only the chat), so it counts as dropped: a comeback
sends it again, as the bridge did before this column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a batch would rebuild the SQLite table and lose AUTOINCREMENT.
    op.add_column(
        "bridge_registrations",
        sa.Column("reteno_holds", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        sa.text(
            "UPDATE bridge_registrations SET reteno_holds = :yes "
            "WHERE delivered_at IS NOT NULL AND state <> 'removed'"
        ).bindparams(yes=True)
    )


def downgrade() -> None:
    with op.batch_alter_table(
        "bridge_registrations", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("reteno_holds")
