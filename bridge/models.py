"""Database models of the audit ledger (SQLAlchemy 2.0 declarative).

Owns the tables and nothing else: no commits, no state changes. Rows are
written by :mod:`bridge.ledger`; a row's ``state`` (its first one too) only by its
state table (``bridge.ledger.states``). The schema is created and changed only by the Alembic
revisions in ``migrations/``; ``tests/test_app.py`` checks that these
models and the migrations agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Identifier names in Reteno's priority order, as (API name, column name).
IDENTIFIERS = (
    ("contactId", "contact_id"),
    ("externalCustomerId", "external_customer_id"),
    ("phone", "phone"),
    ("email", "email"),
)

# A big integer primary key that is still SQLite's auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class Registration(Base):
    """One submitted token with its identifiers: the outbox row and its fate."""

    __tablename__ = "bridge_registrations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(24))
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    external_customer_id: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(15))
    email: Mapped[str | None] = mapped_column(String(254))
    matched_by: Mapped[str] = mapped_column(String(24))
    match_value: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))  # the first: ledger/states.py
    attempts: Mapped[int] = mapped_column(Integer, default=lambda: 0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_id: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removal_reason: Mapped[str | None] = mapped_column(Text)
    # The latest sign of life of the chat under this registration (its submission, a
    # repeated one, an unblock, a /start, a SENT/DELIVERED/CLICKED status): a report of a
    # block older than this is stale.
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Submitted while the chat had a live registration under another identity.
    conflict: Mapped[bool] = mapped_column(Boolean, default=lambda: False)
    # Reteno holds this chat's token under this identity: set by a delivery (or inherited
    # from an earlier registration of the same chat and identity), cleared by a Reteno
    # Forbidden for the chat; a Telegram block leaves it (bridge.ledger.reports).
    reteno_holds: Mapped[bool] = mapped_column(Boolean, default=lambda: False)

    __table_args__ = (
        Index("ix_bridge_registrations_token", "token", "id"),
        # A registration has one to four identifiers: their indexes skip the NULLs.
        *(
            Index(
                f"ix_bridge_registrations_{column}",
                column,
                "id",
                sqlite_where=text(f"{column} IS NOT NULL"),
                postgresql_where=text(f"{column} IS NOT NULL"),
            )
            for _name, column in IDENTIFIERS
        ),
        Index("ix_bridge_registrations_state", "state", "id"),
        # The outbox: due queued rows, oldest first.
        Index(
            "ix_bridge_registrations_outbox",
            "next_attempt_at",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        # Duplicate suppression: one live registration per (token, identifier).
        Index(
            "uq_bridge_registrations_live",
            "token",
            "matched_by",
            "match_value",
            unique=True,
            sqlite_where=text("state <> 'removed'"),
            postgresql_where=text("state <> 'removed'"),
        ),
        # GET /tokens?conflict=true
        Index(
            "ix_bridge_registrations_conflict",
            "id",
            sqlite_where=text("conflict"),
            postgresql_where=text("conflict"),
        ),
        # SQLite: ids are never reused, even after an erase (migration 0004).
        {"sqlite_autoincrement": True},
    )


class Event(Base):
    """Append-only audit history: submissions, attempts, statuses, removals."""

    __tablename__ = "bridge_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    registration_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("bridge_registrations.id", ondelete="SET NULL")
    )
    token: Mapped[str | None] = mapped_column(String(24))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # sha256 of a received status event (bridge.statuses): a replay is recognised by it.
    fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_bridge_events_token", "token", "id"),
        Index("ix_bridge_events_registration_id", "registration_id"),
        Index(
            "ix_bridge_events_fingerprint",
            "fingerprint",
            sqlite_where=text("fingerprint IS NOT NULL"),
            postgresql_where=text("fingerprint IS NOT NULL"),
        ),
    )


class Command(Base):
    """A call to Reteno other than a registration's, in its own outbox: a chat's mute
    or unmute (one row per chat; the latest request wins) or a registration replayed
    into another app (one row per registration and target)."""

    __tablename__ = "bridge_commands"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(16))  # mute | unmute | replay
    token: Mapped[str] = mapped_column(String(24))
    # replay: the registration replayed; mute/unmute: the live one when last requested
    registration_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("bridge_registrations.id", ondelete="SET NULL")
    )
    duration: Mapped[int | None] = mapped_column(Integer)  # mute: seconds asked for
    muted_until: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: until unmuted
    target_app: Mapped[str | None] = mapped_column(String(64))  # replay: the app uuid
    target_url: Mapped[str | None] = mapped_column(String(255))  # replay: its base URL
    # mute/unmute: one more per request; an outcome for an older request moves nothing
    version: Mapped[int] = mapped_column(Integer, default=lambda: 0)
    state: Mapped[str] = mapped_column(String(16))  # the first: ledger/states.py
    attempts: Mapped[int] = mapped_column(Integer, default=lambda: 0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_id: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # one mute row per chat
        Index(
            "uq_bridge_commands_mute",
            "token",
            unique=True,
            sqlite_where=text("action IN ('mute', 'unmute')"),
            postgresql_where=text("action IN ('mute', 'unmute')"),
        ),
        # a registration is replayed once into a target
        Index(
            "uq_bridge_commands_replay",
            "registration_id",
            "target_app",
            "target_url",
            unique=True,
            sqlite_where=text("action = 'replay'"),
            postgresql_where=text("action = 'replay'"),
        ),
        Index(
            "ix_bridge_commands_outbox",
            "next_attempt_at",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index("ix_bridge_commands_registration_id", "registration_id"),
        {"sqlite_autoincrement": True},
    )


class OutgoingEvent(Base):
    """A bot's custom event for Reteno (``POST /events``), in its own outbox: the chat it
    is about, the event type key and params as the bot gave them; the chat's contact
    identifier is added when it is sent (``registration_id``: the registration it was
    taken from)."""

    __tablename__ = "bridge_outgoing_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(24))
    registration_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("bridge_registrations.id", ondelete="SET NULL")
    )
    event_type_key: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())  # "time", else received
    state: Mapped[str] = mapped_column(String(16))  # the first: ledger/states.py
    attempts: Mapped[int] = mapped_column(Integer, default=lambda: 0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_id: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_bridge_outgoing_events_token", "token", "id"),
        Index("ix_bridge_outgoing_events_state", "state", "id"),
        Index(
            "ix_bridge_outgoing_events_outbox",
            "next_attempt_at",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index("ix_bridge_outgoing_events_registration_id", "registration_id"),
        {"sqlite_autoincrement": True},
    )


class Link(Base):
    """A ``/start`` link made for a customer (``kind`` link: the first chat that opens it
    binds it) or a chat-first claim code (``kind`` claim: made for a chat, claimed once by
    the site with the customer's identifiers). Neither the payload nor the code is kept:
    only its SHA-256. Erase clears the identifiers and the chat: a tombstone remains."""

    __tablename__ = "bridge_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public, random hex
    kind: Mapped[str] = mapped_column(String(8))  # link | claim
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the payload / code
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    external_customer_id: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(15))
    email: Mapped[str | None] = mapped_column(String(254))
    token: Mapped[str | None] = mapped_column(String(24))  # link: the chat bound; claim: its chat
    state: Mapped[str] = mapped_column(String(16))  # the first: ledger/states.py
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: never
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(16))  # why revoked: deleted | erased

    __table_args__ = (
        Index("uq_bridge_links_secret_hash", "secret_hash", unique=True),
        Index(
            "ix_bridge_links_token",
            "token",
            sqlite_where=text("token IS NOT NULL"),
            postgresql_where=text("token IS NOT NULL"),
        ),
        # erase finds a person's links by any identifier
        *(
            Index(
                f"ix_bridge_links_{column}",
                column,
                sqlite_where=text(f"{column} IS NOT NULL"),
                postgresql_where=text(f"{column} IS NOT NULL"),
            )
            for _name, column in IDENTIFIERS
        ),
    )


class BridgeState(Base):
    """Small shared facts every process must see: delivery pause, last upstream result."""

    __tablename__ = "bridge_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SupportUser(Base):
    """A staff account of the support page (``bridge support-user``): a name and a
    password hash (werkzeug's), never the password."""

    __tablename__ = "bridge_support_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # one more with each logout and new password: a session cookie names the generation it
    # was made in, so either ends every session of the account (cookies are signed, not
    # stored); a new account starts at a random one (bridge.ledger.staff.add)
    generation: Mapped[int] = mapped_column(Integer, default=lambda: 0)

    __table_args__ = ({"sqlite_autoincrement": True},)


class SupportLogin(Base):
    """Failed logins to the support page in a row, per user name (known or not): every
    process reads the same wait before the next attempt is heard."""

    __tablename__ = "bridge_support_logins"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=lambda: 0)
    wait_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())  # a day quiet: forgotten

    __table_args__ = (Index("ix_bridge_support_logins_last_attempt_at", "last_attempt_at"),)
