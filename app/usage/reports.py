"""Usage reports and the checks and repairs of the session and daily rows.

A report row has key columns (a day, a month, a session, a model or a user) and the
same measures: calls, the four token counts, their total, the cost and how many
calls are unpriced. Days and months are cut at midnight in the report's time zone.

UTC days and months are read from the daily rows the worker keeps. Any other zone,
and every other report, sums the ledger: in SQL (``AT TIME ZONE``) on PostgreSQL,
in Python with ``zoneinfo`` on SQLite, which has no time zones. Every path gives
the same figures; costs stay Decimal throughout.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Date, cast, func, select, tuple_

from app.models import DailyUsage, SessionUsage, UsageRecord, User
from app.usage.pricing import price_call
from app.usage.records import CallUsage

log = logging.getLogger(__name__)

TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
)
MEASURES = (
    "calls",
    *TOKEN_COLUMNS,
    "total_tokens",
    "cost",
    "unpriced_calls",
)
# Kept in the session and daily rows, not shown in reports.
KEPT_ONLY = ("web_search_requests",)
UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class Scope:
    """Which ledger records a report covers: one user or all, and a day range."""

    user_id: int | None = None
    since: date | None = None
    until: date | None = None
    zone: ZoneInfo = UTC_ZONE

    def start(self):
        """The first instant of ``since`` in the zone, in UTC."""
        return self._midnight(self.since)

    def end(self):
        """The first instant after ``until`` in the zone, in UTC."""
        return self._midnight(self.until and self.until + timedelta(days=1))

    def _midnight(self, day):
        if day is None:
            return None
        return datetime.combine(day, time(), tzinfo=self.zone).astimezone(UTC)

    @property
    def utc(self):
        return self.zone.key == "UTC"


# --- the reports


def daily(session, *, from_ledger=False, **scope):
    """One row per day and user: ``day`` is a date in the scope's zone."""
    return _by_period(session, Scope(**scope), "day", from_ledger)


def monthly(session, *, from_ledger=False, **scope):
    """One row per month and user: ``month`` is "YYYY-MM" in the scope's zone."""
    return _by_period(session, Scope(**scope), "month", from_ledger)


def sessions(session, **scope):
    """One row per session, newest first, counting its calls in the scope."""
    scope = Scope(**scope)
    r = UsageRecord
    keys = [
        r.session_id,
        User.username,
        func.min(r.occurred_at).label("first_at"),
        func.max(r.occurred_at).label("last_at"),
    ]
    rows = _ledger_sums(session, scope, keys, [r.session_id, User.username])
    for row in rows:
        row["first_at"] = row["first_at"].astimezone(scope.zone)
        row["last_at"] = row["last_at"].astimezone(scope.zone)
    return sorted(rows, key=lambda r: (r["last_at"], r["session_id"]), reverse=True)


def models(session, **scope):
    """One row per model, by model id."""
    rows = _ledger_sums(session, Scope(**scope), [UsageRecord.model])
    return sorted(rows, key=lambda r: r["model"])


def users(session, **scope):
    """One row per user, by username."""
    rows = _ledger_sums(session, Scope(**scope), [User.username])
    return sorted(rows, key=lambda r: r["username"])


def total(rows):
    """The measures of ``rows`` added up: the report's total line."""
    out = dict.fromkeys(("calls", "unpriced_calls", *TOKEN_COLUMNS), 0)
    out["cost"] = Decimal(0)
    for row in rows:
        for name in out:
            out[name] += row[name] or 0
    return _finish(out)


# --- days and months


def _by_period(session, scope, period, from_ledger):
    if scope.utc and not from_ledger:
        rows = _from_daily_rows(session, scope, period)
    elif _sqlite(session):
        rows = _period_in_python(session, scope, period)
    else:
        rows = _ledger_sums(session, scope, [_pg_period(scope, period), User.username])
    return sorted(rows, key=lambda r: (r[period], r["username"]))


def _from_daily_rows(session, scope, period):
    t = DailyUsage
    key = t.day if period == "day" else _month_of_day(session, t.day)
    query = (
        select(key.label(period), User.username, *_summed(t))
        .join(User, User.id == t.user_id)
        .group_by(key, User.username)
    )
    if scope.user_id is not None:
        query = query.where(t.user_id == scope.user_id)
    if scope.since is not None:
        query = query.where(t.day >= scope.since)
    if scope.until is not None:
        query = query.where(t.day <= scope.until)
    return [_finish(dict(row._mapping)) for row in session.execute(query)]


def _month_of_day(session, day):
    if _sqlite(session):
        return func.strftime("%Y-%m", day)
    return func.to_char(day, "YYYY-MM")


def _pg_period(scope, period):
    local = func.timezone(scope.zone.key, UsageRecord.occurred_at)
    if period == "day":
        return cast(local, Date).label("day")
    return func.to_char(local, "YYYY-MM").label("month")


def _period_in_python(session, scope, period):
    r = UsageRecord
    columns = [User.username, r.occurred_at, r.cost, *_token_columns(r)]
    query = _within(select(*columns).join(User, User.id == r.user_id), scope)
    groups = defaultdict(_Sums)
    for row in session.execute(query):
        local = row.occurred_at.astimezone(scope.zone)
        key = local.date() if period == "day" else local.strftime("%Y-%m")
        groups[(key, row.username)].add(row)
    return [
        {period: key, "username": username, **sums.measures()}
        for (key, username), sums in groups.items()
    ]


@dataclass
class _Sums:
    """Measures added up one ledger record at a time (SQLite's zone-aware path)."""

    calls: int = 0
    unpriced_calls: int = 0
    cost: Decimal = Decimal(0)
    tokens: dict = field(default_factory=lambda: dict.fromkeys(TOKEN_COLUMNS, 0))

    def add(self, record):
        self.calls += 1
        if record.cost is None:
            self.unpriced_calls += 1
        else:
            self.cost += record.cost
        for name in TOKEN_COLUMNS:
            self.tokens[name] += getattr(record, name)

    def measures(self):
        out = dict(self.tokens, calls=self.calls, unpriced_calls=self.unpriced_calls)
        return _finish(out | {"cost": self.cost})


# --- sums in SQL


def _ledger_sums(session, scope, columns, group_by=None):
    """Ledger records in ``scope`` summed per ``group_by`` (default: ``columns``)."""
    r = UsageRecord
    query = (
        select(*columns, *_ledger_measures())
        .join(User, User.id == r.user_id)
        .group_by(*(group_by or columns))
    )
    return [
        _finish(dict(row._mapping)) for row in session.execute(_within(query, scope))
    ]


def _within(query, scope):
    r = UsageRecord
    if scope.user_id is not None:
        query = query.where(r.user_id == scope.user_id)
    if scope.since is not None:
        query = query.where(r.occurred_at >= scope.start())
    if scope.until is not None:
        query = query.where(r.occurred_at < scope.end())
    return query


def _ledger_measures(*extra):
    """Calls, unpriced calls, token and ``extra`` sums and the cost, in SQL."""
    r = UsageRecord
    summed = [*TOKEN_COLUMNS, *extra]
    return [
        func.count(r.id).label("calls"),
        func.count(r.id).filter(r.cost.is_(None)).label("unpriced_calls"),
        *(func.sum(r.__table__.c[name]).label(name) for name in summed),
        func.sum(r.cost).label("cost"),
    ]


def _summed(t):
    return [
        func.sum(t.calls).label("calls"),
        func.sum(t.unpriced_calls).label("unpriced_calls"),
        *(func.sum(c).label(c.name) for c in _token_columns(t)),
        func.sum(t.cost).label("cost"),
    ]


def _token_columns(model):
    return [model.__table__.c[name] for name in TOKEN_COLUMNS]


def _finish(row):
    """Whole numbers as int, the total, and a cost only where some call is priced.

    PostgreSQL sums BIGINT into NUMERIC; the daily rows keep 0 for unpriced calls
    while the ledger keeps NULL: both become the same row here.
    """
    for name in ("calls", "unpriced_calls", *TOKEN_COLUMNS):
        row[name] = int(row[name] or 0)
    row["total_tokens"] = sum(row[name] for name in TOKEN_COLUMNS)
    all_unpriced = row["calls"] == row["unpriced_calls"] and row["calls"] > 0
    row["cost"] = None if all_unpriced else Decimal(row["cost"] or 0)
    return row


def _sqlite(session):
    return session.get_bind().dialect.name == "sqlite"


# --- verify


def verify(session):
    """What differs between the session/daily rows and the ledger; empty if none."""
    r = UsageRecord
    utc = func.timezone("UTC", r.occurred_at) if not _sqlite(session) else r.occurred_at
    checks = [
        (
            SessionUsage,
            ("session_id", "user_id"),
            _sums_by(session, r.session_id, r.user_id),
        ),
        (
            DailyUsage,
            ("user_id", "day", "model"),
            _sums_by(session, r.user_id, func.date(utc), r.model),
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


def _sums_by(session, *keys):
    query = select(*keys, *_ledger_measures(*KEPT_ONLY)).group_by(*keys)
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


# --- reprice


@dataclass
class RepriceResult:
    """Unpriced ledger records found, those priced now, and the rows re-derived."""

    unpriced: int = 0
    priced: dict = field(default_factory=dict)
    cost: Decimal = Decimal(0)
    sessions: int = 0
    days: int = 0

    @property
    def priced_calls(self):
        return sum(self.priced.values())


def reprice(session, *, dry_run=False):
    """Price the unpriced ledger records whose model has a price now.

    Then recompute, from the ledger, the session and daily rows they belong to.
    All in the caller's transaction; with ``dry_run`` nothing is written.
    """
    result = RepriceResult()
    found = []
    for record in _unpriced_records(session):
        result.unpriced += 1
        price = price_call(_call_of(record))
        if price.priced:
            found.append((record, price))
            result.priced[record.model] = result.priced.get(record.model, 0) + 1
            result.cost += price.cost
    if dry_run or not found:
        return result

    for record, price in found:
        record.cost, record.price_ref = price.cost, price.ref
    session.flush()
    result.sessions = _rederive_sessions(
        session, {(r.session_id, r.user_id) for r, _ in found}
    )
    result.days = _rederive_days(session, {_day_key(r) for r, _ in found})
    log.info(
        "reprice: %d of %d unpriced records priced, $%s",
        result.priced_calls,
        result.unpriced,
        result.cost,
    )
    return result


def _unpriced_records(session):
    query = select(UsageRecord).where(UsageRecord.cost.is_(None))
    # Locked: a second reprice running at once waits, then finds them priced.
    return session.scalars(_for_update(session, query.order_by(UsageRecord.id)))


def _for_update(session, query):
    return query if _sqlite(session) else query.with_for_update()


def _call_of(record):
    return CallUsage(**{f.name: getattr(record, f.name) for f in fields(CallUsage)})


def _day_key(record):
    return (record.user_id, record.occurred_at.astimezone(UTC).date(), record.model)


def _rederive_sessions(session, keys):
    """Set each (session id, user id) row to the sums of its ledger records."""
    s, r = SessionUsage, UsageRecord
    # Locked first, in the worker's order, so that a save waits for this
    # transaction instead of adding to a row about to be overwritten.
    keys = sorted(keys)
    pair = tuple_(s.session_id, s.user_id)
    rows = session.scalars(
        _for_update(
            session,
            select(s).where(pair.in_(keys)).order_by(s.session_id, s.user_id),
        )
    ).all()
    sums = {
        (row.session_id, row.user_id): row
        for row in session.execute(
            select(
                r.session_id,
                r.user_id,
                func.min(r.occurred_at).label("first_at"),
                func.max(r.occurred_at).label("last_at"),
                *_ledger_measures(*KEPT_ONLY),
            )
            .where(tuple_(r.session_id, r.user_id).in_(keys))
            .group_by(r.session_id, r.user_id)
        )
    }
    for row in rows:
        found = sums[(row.session_id, row.user_id)]
        _set_sums(row, found._mapping)
        row.first_at = found.first_at
        row.last_at = found.last_at
    return len(rows)


def _rederive_days(session, keys):
    """Set each daily row (user, UTC day, model) to the sums of its ledger records."""
    d, r = DailyUsage, UsageRecord
    derived = 0
    for user_id, day, model in sorted(keys):
        row = session.scalars(
            _for_update(
                session,
                select(d).where(d.user_id == user_id, d.day == day, d.model == model),
            )
        ).one_or_none()
        if row is None:
            continue
        start = datetime.combine(day, time(), tzinfo=UTC)
        sums = session.execute(
            select(*_ledger_measures(*KEPT_ONLY)).where(
                r.user_id == user_id,
                r.model == model,
                r.occurred_at >= start,
                r.occurred_at < start + timedelta(days=1),
            )
        ).one()
        _set_sums(row, sums._mapping)
        derived += 1
    return derived


def _set_sums(row, sums):
    for name in ("calls", "unpriced_calls", *TOKEN_COLUMNS, *KEPT_ONLY):
        setattr(row, name, int(sums[name] or 0))
    row.cost = Decimal(sums["cost"] or 0)
