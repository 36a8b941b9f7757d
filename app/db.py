"""Database engine, sessions and the column types every table shares."""

from contextlib import contextmanager
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    MetaData,
    Numeric,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

MONEY_PLACES = 12
_MONEY_SCALE = Decimal(10) ** MONEY_PLACES

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Money(TypeDecorator):
    """US dollars, exact to 12 decimal places in every database.

    PostgreSQL keeps NUMERIC exactly. SQLite would turn NUMERIC into a float, so
    there the value is stored as a whole number of picodollars instead, which
    SQLite adds and sums exactly.
    """

    impl = Numeric(24, MONEY_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(24, MONEY_PLACES, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = Decimal(value)
        scaled = value * _MONEY_SCALE
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{value} has more than {MONEY_PLACES} decimal places")
        if dialect.name == "sqlite":
            return int(scaled)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)) / _MONEY_SCALE
        return Decimal(value)


def make_engine(url, **kwargs):
    """An engine; SQLite gets WAL and a busy timeout so two processes can share it."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("postgresql+psycopg2"):
        # Upserts of many rows go in pages, not one round trip a row.
        kwargs.setdefault("executemany_mode", "values_plus_batch")
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine):
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(session_factory):
    """One transaction: commit when the block ends, roll back if it raises."""
    with session_factory() as session, session.begin():
        yield session
