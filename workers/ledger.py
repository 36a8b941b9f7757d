"""Write usage records to the ledger and add the new ones to the running totals.

Everything happens in the caller's transaction: a record is either in the ledger
and in its session and daily rows, or in none of them.
"""

import logging
from collections import defaultdict
from decimal import Decimal

from sqlalchemy import delete, func
from sqlalchemy.dialects import postgresql, sqlite

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
    new_keys = _insert_new(session, rows)
    new_rows = [
        row for row in rows if (row["message_id"], row["request_id"]) in new_keys
    ]
    _add_to_totals(session, new_rows)
    _clear_outbox(session, [row["message_id"] for row in rows])
    log.info(
        "usage batch: %d records, %d new, %d already saved",
        len(rows),
        len(new_rows),
        len(rows) - len(new_rows),
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


def _clear_outbox(session, message_ids):
    """The record is saved: its outbox entry, if any, has done its job."""
    session.execute(delete(OutboxEntry).where(OutboxEntry.message_id.in_(message_ids)))
