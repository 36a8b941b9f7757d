"""Tables. Words follow the README's glossary: user, session, call, usage record."""

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.db import Base, Money

# What every totals row (session, daily) keeps, in the order reports show it.
TOTAL_COUNTS = (
    "calls",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "web_search_requests",
)
TOTAL_MEASURES = (*TOTAL_COUNTS, "cost")


def utcnow():
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps in every database.

    PostgreSQL keeps the zone. SQLite keeps none: values are stored as UTC and
    handed back marked UTC. (A DateTime subclass would not do: SQLite swaps in
    its own DateTime type and drops the subclass's processing.)
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def tokens(**kwargs):
    return mapped_column(BigInteger, nullable=False, default=0, **kwargs)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'admin')", name="role"),
        CheckConstraint("daily_budget >= 0", name="daily_budget_not_negative"),
        CheckConstraint("monthly_budget >= 0", name="monthly_budget_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # NULL: no password sign-in (development or single sign-on accounts).
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The `sub` claim of the outside issuer's tokens, for single sign-on accounts.
    external_subject: Mapped[str | None] = mapped_column(
        String(255), nullable=True, unique=True
    )
    # US dollars per UTC day and month; NULL means no limit.
    daily_budget: Mapped[object | None] = mapped_column(Money(), nullable=True)
    monthly_budget: Mapped[object | None] = mapped_column(Money(), nullable=True)

    @property
    def is_admin(self):
        return self.role == "admin"


class RevokedToken(Base):
    """A signed-out token, refused until it would have expired anyway."""

    __tablename__ = "revoked_tokens"

    # The token's `jti`, or a digest of the token when the issuer sets none.
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ChatSession(Base):
    """A conversation in the chat page; its turns are the history sent to Claude."""

    __tablename__ = "chat_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ChatTurn(Base):
    __tablename__ = "chat_turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    # JSON text of the Messages API content (a string or a list of blocks).
    content: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UsageRecord(Base):
    """The ledger: one row per billed Claude call, never updated by a retry."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("message_id", "request_id"),
        # One user's records by time: the reports and the API in any time zone.
        Index("ix_usage_records_user_id_occurred_at", "user_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    message_id: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(128), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    input_tokens: Mapped[int] = tokens()
    output_tokens: Mapped[int] = tokens()
    cache_creation_tokens: Mapped[int] = tokens()
    cache_creation_1h_tokens: Mapped[int] = tokens()
    cache_read_tokens: Mapped[int] = tokens()
    thinking_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    web_search_requests: Mapped[int] = tokens()
    web_fetch_requests: Mapped[int] = tokens()
    service_tier: Mapped[str | None] = mapped_column(String(32), nullable=True)
    inference_geo: Mapped[str | None] = mapped_column(String(32), nullable=True)
    speed: Mapped[str | None] = mapped_column(String(32), nullable=True)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="chat")
    cost: Mapped[object | None] = mapped_column(Money(), nullable=True)
    price_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SessionUsage(Base):
    """Running totals of one user's session: always the sum of its ledger rows.

    Keyed by user too: two users' records never share a row, even when an
    imported transcript gives both the same session id.
    """

    __tablename__ = "session_usage"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id"), primary_key=True, index=True
    )
    calls: Mapped[int] = tokens()
    unpriced_calls: Mapped[int] = tokens()
    input_tokens: Mapped[int] = tokens()
    output_tokens: Mapped[int] = tokens()
    cache_creation_tokens: Mapped[int] = tokens()
    cache_read_tokens: Mapped[int] = tokens()
    web_search_requests: Mapped[int] = tokens()
    cost: Mapped[object] = mapped_column(Money(), default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DailyUsage(Base):
    """Running totals of one user, one UTC day and one model."""

    __tablename__ = "daily_usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    calls: Mapped[int] = tokens()
    unpriced_calls: Mapped[int] = tokens()
    input_tokens: Mapped[int] = tokens()
    output_tokens: Mapped[int] = tokens()
    cache_creation_tokens: Mapped[int] = tokens()
    cache_read_tokens: Mapped[int] = tokens()
    web_search_requests: Mapped[int] = tokens()
    cost: Mapped[object] = mapped_column(Money(), default=0)


class OutboxEntry(Base):
    """A usage record waiting to reach the broker; kept until it was handed over."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), index=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime(), nullable=True, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class DeadLetter(Base):
    """A payload whose retries ran out; `flask usage replay` saves it later."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
