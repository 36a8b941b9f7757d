"""What cache reads saved: each call priced with its cache reads as plain input,
less its price as billed.

Both prices come from ``app.usage.pricing`` for the call as it happened (its day,
service tier, geography and long-context tier), so a call's saving is exactly its
cache read tokens times the difference between its input and cache read prices.
That difference is the same for every call of one model, UTC day, variant and
tier, so it is priced once per such group, with a one-token probe; pricing every
call would take minutes for a month of imported Claude Code sessions.
"""

from bisect import bisect_left
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal, localcontext

from flask import current_app, jsonify, request
from sqlalchemy import select

from app.api import bp
from app.api.filters import read_filters
from app.api.queries import in_scope
from app.api.routes import to_json
from app.auth.access import current_user, login_required
from app.db import unit_of_work
from app.models import UsageRecord
from app.usage.pricing import price_call, tier_starts, utc_day
from app.usage.records import CallUsage

COUNTS = ("calls", "unpriced_calls", "cache_read_tokens")


@bp.get("/usage/savings")
@login_required
def usage_savings():
    with unit_of_work(current_app.extensions["tally.db"]) as session:
        filters = read_filters(session, current_user(), request.args)
        rows = by_model(session, filters)
    return jsonify(
        filters=filters.public(), models=to_json(rows), totals=to_json(totals(rows))
    )


def by_model(session, filters):
    """Calls with cache reads in scope, their tokens and savings, per model."""
    rates = Rates()
    groups = defaultdict(_zero)
    with localcontext(prec=60):  # sums of exact amounts stay exact
        for row in session.execute(_with_cache_reads(filters)):
            _add(groups[row.model], row, rates.per_token(row) if row.priced else None)
    return [{"model": model} | groups[model] for model in sorted(groups)]


def totals(rows):
    out = _zero()
    for row in rows:
        for name in out:
            out[name] += row[name]
    return out


def _zero():
    return dict.fromkeys(COUNTS, 0) | {"saved": Decimal(0)}


def _add(out, row, rate):
    out["calls"] += 1
    out["cache_read_tokens"] += row.cache_read_tokens
    if rate is None:
        out["unpriced_calls"] += 1
    else:
        out["saved"] += rate * row.cache_read_tokens


def call_saving(call):
    """Dollars ``call``'s cache reads saved against its input price, or None."""
    billed = price_call(call)
    as_input = price_call(
        replace(
            call,
            input_tokens=call.input_tokens + call.cache_read_tokens,
            cache_read_tokens=0,
        )
    )
    if not (billed.priced and as_input.priced):
        return None
    return as_input.cost - billed.cost


class Rates:
    """Dollars one cache read token saved, per model, day, variant and tier."""

    def __init__(self):
        self._rates = {}
        self._tiers = {}

    def per_token(self, row):
        key = self._key(row)
        if key not in self._rates:
            self._rates[key] = call_saving(_probe(row))
        return self._rates[key]

    def _key(self, row):
        if row.model not in self._tiers:
            self._tiers[row.model] = tier_starts(row.model)
        starts, timed = self._tiers[row.model]
        # Counts strictly between two starts share a tier; a start is its own.
        where = bisect_left(starts, row.total_input)
        on_start = where < len(starts) and starts[where] == row.total_input
        when = row.occurred_at if timed else utc_day(row.occurred_at)
        variant = (row.service_tier, row.inference_geo, row.speed)
        return row.model, when, variant, where, on_start


def _probe(row):
    """A call like ``row``'s, with the same input in all, one token of it read."""
    return CallUsage(
        message_id=f"savings probe ({row.model})",
        user_id=0,
        session_id="",
        model=row.model,
        occurred_at=row.occurred_at,
        input_tokens=row.total_input - 1,
        cache_read_tokens=1,
        service_tier=row.service_tier,
        inference_geo=row.inference_geo,
        speed=row.speed,
    )


def _with_cache_reads(filters):
    r = UsageRecord
    total = r.input_tokens + r.cache_creation_tokens + r.cache_read_tokens
    query = select(
        r.model,
        r.occurred_at,
        r.service_tier,
        r.inference_geo,
        r.speed,
        total.label("total_input"),
        r.cache_read_tokens,
        r.cost.is_not(None).label("priced"),
    ).where(r.cache_read_tokens > 0)
    return in_scope(query, r, filters)
