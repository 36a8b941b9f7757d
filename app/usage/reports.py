"""Usage reports, read from the session and daily rows the worker keeps."""

from decimal import Decimal

from sqlalchemy import func, select

from app.models import DailyUsage, SessionUsage, UsageRecord, User

TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
)


def daily(session, *, user_id=None, since=None, until=None):
    """One row per user and UTC day: calls, tokens and cost."""
    t = DailyUsage
    query = (
        select(User.username, t.day, *_sums(t))
        .join(User, User.id == t.user_id)
        .group_by(User.username, t.day)
        .order_by(t.day, User.username)
    )
    query = _filter(query, t.user_id, user_id, t.day, since, until)
    return [_row(r) for r in session.execute(query)]


def sessions(session, *, user_id=None, since=None, until=None):
    """One row per session, newest first."""
    t = SessionUsage
    query = (
        select(User.username, t.session_id, t.first_at, t.last_at, *_columns(t))
        .join(User, User.id == t.user_id)
        .order_by(t.last_at.desc())
    )
    query = _filter(query, t.user_id, user_id, t.last_at, since, until)
    return [_row(r) for r in session.execute(query)]


def _sums(t):
    return [
        func.sum(t.calls).label("calls"),
        func.sum(t.unpriced_calls).label("unpriced_calls"),
        *(func.sum(t.__table__.c[c]).label(c) for c in TOKEN_COLUMNS),
        func.sum(t.cost).label("cost"),
    ]


def _columns(t):
    return [
        t.calls,
        t.unpriced_calls,
        *(t.__table__.c[c] for c in TOKEN_COLUMNS),
        t.cost,
    ]


def _filter(query, user_column, user_id, time_column, since, until):
    if user_id is not None:
        query = query.where(user_column == user_id)
    if since is not None:
        query = query.where(time_column >= since)
    if until is not None:
        query = query.where(time_column <= until)
    return query


def _row(row):
    out = dict(row._mapping)
    out["cost"] = Decimal(out["cost"] or 0)
    return out


def verify(session):
    """What differs between the session/daily rows and the ledger; empty if none."""
    r = UsageRecord
    utc = func.timezone("UTC", r.occurred_at) if not _sqlite(session) else r.occurred_at
    checks = [
        (SessionUsage, ("session_id",), _ledger_sums(session, r.session_id)),
        (
            DailyUsage,
            ("user_id", "day", "model"),
            _ledger_sums(session, r.user_id, func.date(utc), r.model),
        ),
    ]
    problems = []
    for model, key_names, ledger in checks:
        for row in session.scalars(select(model)):
            key = tuple(str(getattr(row, name)) for name in key_names)
            problems += _compare(model.__tablename__, key, row, ledger.pop(key, None))
        problems += [
            f"{model.__tablename__} {k}: in the ledger, no row" for k in ledger
        ]
    return problems


def _sqlite(session):
    return session.get_bind().dialect.name == "sqlite"


def _ledger_sums(session, *keys):
    r = UsageRecord
    query = select(
        *keys,
        func.count(r.id).label("calls"),
        func.count(r.id).filter(r.cost.is_(None)).label("unpriced_calls"),
        *(func.sum(r.__table__.c[c]).label(c) for c in TOKEN_COLUMNS),
        func.sum(r.cost).label("cost"),
    ).group_by(*keys)
    width = len(keys)
    return {
        tuple(str(v) for v in row[:width]): dict(list(row._mapping.items())[width:])
        for row in session.execute(query)
    }


def _compare(table, key, row, expected):
    if expected is None:
        return [f"{table} {key}: row has no ledger records"]
    return [
        f"{table} {key}: {name} is {getattr(row, name)}, ledger says {value}"
        for name, value in expected.items()
        if Decimal(getattr(row, name)) != Decimal(value or 0)
    ]
