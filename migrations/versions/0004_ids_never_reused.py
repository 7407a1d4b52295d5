"""Registration ids are never reused, on SQLite too.

Without ``AUTOINCREMENT`` SQLite gives a new row the largest id plus one, so the
id of a registration erased while it was the newest came back for the next one:
an id a client saved would then name someone else. The table is rebuilt with
``AUTOINCREMENT`` (SQLite then remembers the largest id ever used). PostgreSQL
sequences never go back: nothing to do there.

``bridge migrate`` runs SQLite migrations with foreign keys off, so dropping the
old table does not touch the events that refer to it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "bridge_registrations", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    # The rebuilt table must keep the partial unique index of duplicate suppression as
    # it was (a removed token may be registered again).
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND "
        "name = 'uq_bridge_registrations_live'"
    ).scalar()
    if not sql or "WHERE" not in sql.upper():
        raise RuntimeError("rebuilding bridge_registrations lost its partial unique index")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "bridge_registrations", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
