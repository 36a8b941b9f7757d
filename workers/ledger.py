"""Write usage records to the ledger and add the new ones to the running totals.

Everything happens in the caller's transaction: a record is either in the ledger
and in its session and daily rows, or in none of them.

On PostgreSQL a batch is one statement: the records travel as one JSON
parameter, the ledger insert returns the rows that were new, and the same
statement sums those into the session and daily rows. Python then does no
per-row SQL work, which is most of what a batch would otherwise cost. SQLite
gets the same result from three statements.
"""

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import String, delete, func, text
from sqlalchemy.dialects import postgresql, sqlite

from app.db import Money
from app.models import (
    TOTAL_MEASURES,
    DailyUsage,
    OutboxEntry,
    SessionUsage,
    UsageRecord,
)
from app.usage.rates import shared_rates

log = logging.getLogger(__name__)

SUMMED = TOTAL_MEASURES


def save_calls(session, calls):
    """Save ``CallUsage`` records once each; return the keys that were new."""
    calls = _unique(calls)
    if not calls:
        return []
    rates = shared_rates()
    rows = [_ledger_row(call, rates) for call in calls]
    if session.get_bind().dialect.name == "postgresql":
        new_keys = _save_in_one_statement(session, rows)
    else:
        new_keys = _insert_new(session, rows)
        _add_to_totals(
            session,
            [r for r in rows if (r["message_id"], r["request_id"]) in new_keys],
        )
    _clear_outbox(session, [row["message_id"] for row in rows])
    log.info(
        "usage batch: %d records, %d new, %d already saved",
        len(rows),
        len(new_keys),
        len(rows) - len(new_keys),
    )
    return sorted(new_keys)


def _unique(calls):
    seen = {}
    for call in calls:
        seen.setdefault(call.key, call)
    return list(seen.values())


def _ledger_row(call, rates):
    price = rates.price(call)
    row = call.to_payload()
    row.update(occurred_at=call.occurred_at, cost=price.cost, price_ref=price.ref)
    return row


def _insert(session, table):
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _insert_new(session, rows):
    table = UsageRecord.__table__
    stmt = (
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["message_id", "request_id"])
        .returning(table.c.message_id, table.c.request_id)
    )
    # Rows passed apart from the statement: SQLAlchemy caches its compiled form
    # and sends the rows in batches of many VALUES ("insertmanyvalues").
    return {tuple(r) for r in session.execute(stmt, rows)}


def _add_to_totals(session, rows):
    by_session, by_day = defaultdict(_totals), defaultdict(_totals)
    for row in rows:
        _plus(by_session[(row["session_id"], row["user_id"])], row)
        _plus(by_day[(row["user_id"], row["occurred_at"].date(), row["model"])], row)
    # One statement a table; rows in a fixed order keep two workers from
    # locking the same rows crosswise.
    sessions = [
        dict(totals, session_id=session_id, user_id=user_id)
        for (session_id, user_id), totals in sorted(by_session.items())
    ]
    days = [
        _without_times(totals) | {"user_id": user_id, "day": day, "model": model}
        for (user_id, day, model), totals in sorted(by_day.items())
    ]
    _upsert(session, SessionUsage, ["session_id", "user_id"], sessions)
    _upsert(session, DailyUsage, ["user_id", "day", "model"], days)


def _totals():
    return dict.fromkeys(SUMMED, 0) | {"cost": Decimal(0)}


def _plus(totals, row):
    totals["calls"] += 1
    if row["cost"] is None:
        totals["unpriced_calls"] += 1
    else:
        totals["cost"] += row["cost"]
    for name in SUMMED[2:-1]:
        totals[name] += row[name]
    at = row["occurred_at"]
    totals["first_at"] = min(totals.get("first_at", at), at)
    totals["last_at"] = max(totals.get("last_at", at), at)


def _without_times(totals):
    return {k: v for k, v in totals.items() if k not in ("first_at", "last_at")}


def _upsert(session, model, keys, rows):
    if not rows:
        return
    table = model.__table__
    stmt = _insert(session, table)
    update = {name: table.c[name] + stmt.excluded[name] for name in SUMMED}
    if model is SessionUsage:
        update["first_at"] = _least(session, table.c.first_at, stmt.excluded.first_at)
        update["last_at"] = _greatest(session, table.c.last_at, stmt.excluded.last_at)
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)


def _least(session, a, b):
    # SQLite's two-argument min() is PostgreSQL's least().
    sqlite_db = session.get_bind().dialect.name == "sqlite"
    return func.min(a, b) if sqlite_db else func.least(a, b)


def _greatest(session, a, b):
    sqlite_db = session.get_bind().dialect.name == "sqlite"
    return func.max(a, b) if sqlite_db else func.greatest(a, b)


def _save_in_one_statement(session, rows):
    """PostgreSQL: ledger insert and both totals in one statement; the new keys."""
    money = Money()
    dialect = session.get_bind().dialect
    for row in rows:
        money.process_bind_param(row["cost"], dialect)  # more than 12 places: error
    payload = json.dumps([_json_row(row) for row in rows])
    found = session.execute(
        _one_statement(), {"rows": payload, "saved_at": datetime.now(UTC)}
    )
    return {tuple(r) for r in found}


def _json_row(row):
    cost = row["cost"]
    return row | {
        "occurred_at": row["occurred_at"].isoformat(),
        "cost": None if cost is None else str(cost),
    }


@lru_cache(maxsize=1)
def _one_statement():
    """The PostgreSQL statement, written from the tables' own columns."""
    ledger = UsageRecord.__table__
    pg = postgresql.dialect()
    columns = [c for c in ledger.columns if c.name not in ("id", "saved_at")]
    fields = ", ".join(f"{c.name} {_field_type(c, pg)}" for c in columns)
    names = ", ".join(c.name for c in columns)
    counts = ", ".join(f"sum({name})" for name in SUMMED[2:-1])
    sums = "count(*), count(*) FILTER (WHERE cost IS NULL), " + counts
    sums += ", coalesce(sum(cost), 0)"
    measures = ", ".join(SUMMED)

    def added(table):
        return ", ".join(f"{n} = {table}.{n} + excluded.{n}" for n in SUMMED)

    return text(f"""
        WITH incoming AS (
            SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({fields})
        ), new AS (
            INSERT INTO usage_records ({names}, saved_at)
            SELECT {names}, :saved_at FROM incoming
            ON CONFLICT (message_id, request_id) DO NOTHING
            RETURNING *
        ), sessions AS (
            INSERT INTO session_usage (session_id, user_id, {measures},
                                       first_at, last_at)
            SELECT session_id, user_id, {sums}, min(occurred_at), max(occurred_at)
            FROM new GROUP BY session_id, user_id ORDER BY session_id, user_id
            ON CONFLICT (session_id, user_id) DO UPDATE SET {added("session_usage")},
                first_at = least(session_usage.first_at, excluded.first_at),
                last_at = greatest(session_usage.last_at, excluded.last_at)
        ), days AS (
            INSERT INTO daily_usage (user_id, day, model, {measures})
            SELECT user_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, model,
                   {sums}
            FROM new GROUP BY user_id, day, model ORDER BY user_id, day, model
            ON CONFLICT (user_id, day, model) DO UPDATE SET {added("daily_usage")}
        )
        SELECT message_id, request_id FROM new
    """)


def _field_type(column, dialect):
    # Text in, so that the table's own column types refuse an overlong string.
    if isinstance(column.type, String):
        return "text"
    return column.type.compile(dialect=dialect)


def _clear_outbox(session, message_ids):
    """The record is saved: its outbox entry, if any, has done its job."""
    session.execute(delete(OutboxEntry).where(OutboxEntry.message_id.in_(message_ids)))
