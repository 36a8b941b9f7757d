"""Save path: a backlog of usage records in the outbox, drained to the ledger.

The figure is records saved per second end to end (relay, broker, worker, ledger,
totals), checked exactly once. Its baseline is the same PostgreSQL saving the same
records with plain batched SQL, no Python in the loop: the rate the database
allows. A second baseline sends one task per record, the naive design.
"""

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from psycopg2.extras import execute_values
from sqlalchemy import func, insert, select

from app.db import make_engine, make_session_factory, unit_of_work
from app.models import (
    TOTAL_MEASURES,
    DeadLetter,
    OutboxEntry,
    SessionUsage,
    UsageRecord,
    User,
)
from app.usage import reports
from app.usage.outbox import Relay
from app.usage.pricing import price_call
from app.usage.records import CallUsage
from bench.common import BenchError, Figure, Goal, log, wait_for
from celery_app import SAVE_USAGE, make_celery
from workers.ledger import save_calls

NAME = "save_path"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
USERS = 50
CALLS_PER_SESSION = 10
SIZES = {
    "smoke": dict(records=600, direct=200, naive=60, batch_sizes=(100,), raw_batch=100),
    "quick": dict(
        records=5_000, direct=2_000, naive=300, batch_sizes=(500,), raw_batch=500
    ),
    "full": dict(
        records=10_000, direct=4_000, naive=500, batch_sizes=(500,), raw_batch=500
    ),
}
WORKERS = (("prefork", 2),)


def make_calls(count, user_ids, start=None):
    """``count`` distinct usage records, ten to a session, over thirty days."""
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    stamp = f"{time.time_ns():x}"
    return [
        CallUsage(
            message_id=f"msg_bench_{stamp}_{i}",
            user_id=user_ids[i // CALLS_PER_SESSION % len(user_ids)],
            session_id=f"bench-{stamp}-{i // CALLS_PER_SESSION}",
            model=MODELS[i % len(MODELS)],
            occurred_at=start + timedelta(minutes=i * 2),
            input_tokens=1000 + i % 977,
            output_tokens=200 + i % 311,
            cache_read_tokens=(i % 5) * 1000,
            source="import",
        )
        for i in range(count)
    ]


def add_users(engine, count=USERS):
    with engine.begin() as conn:
        conn.execute(
            insert(User.__table__), [{"username": f"bench{i}"} for i in range(count)]
        )
        return list(conn.scalars(select(User.id).order_by(User.id)))


def fill_outbox(engine, calls):
    """The outbox as an outage leaves it: every record waiting, none sent."""
    rows = [
        {"message_id": c.message_id, "payload": json.dumps(c.to_payload())}
        for c in calls
    ]
    with engine.begin() as conn:
        conn.execute(insert(OutboxEntry.__table__), rows)


def check_saved(engine, expected):
    """Raise unless the ledger holds exactly ``expected`` records, totals agree."""
    factory = make_session_factory(engine)
    with unit_of_work(factory) as session:
        ledger = session.scalar(select(func.count(UsageRecord.id)))
        calls = session.scalar(select(func.sum(SessionUsage.calls)))
        left = session.scalar(select(func.count(OutboxEntry.id)))
        dead = session.scalar(select(func.count(DeadLetter.id)))
        problems = reports.verify(session)
    if (ledger, calls, left, dead) != (expected, expected, 0, 0) or problems:
        raise BenchError(
            f"saved {ledger} of {expected} records ({calls} in sessions, {left} "
            f"left in the outbox, {dead} dead letters); {problems[:3]}"
        )
    return ledger


def _ledger_count(engine):
    with engine.connect() as conn:
        return conn.scalar(select(func.count(UsageRecord.id)))


def wait_saved(engine, expected, timeout):
    """Seconds from now until the ledger holds ``expected`` records."""
    start = time.monotonic()
    wait_for(
        lambda: _ledger_count(engine) >= expected,
        timeout,
        0.02,
        f"{expected} records in the ledger",
    )
    return time.monotonic() - start


# --- end to end ----------------------------------------------------------------


def end_to_end(scratch, calls, batch_size):
    """Records per second from a full outbox to a full ledger, through Celery."""
    fill_outbox(scratch.engine, calls)
    sender = make_celery(scratch.settings())
    engine = make_engine(scratch.url)

    def send(records):
        sender.send_task(SAVE_USAGE, args=[records])

    relay = Relay(make_session_factory(engine), send, batch_size=batch_size)
    start = time.monotonic()
    relay.start()
    relay.wake()
    try:
        elapsed = (
            time.monotonic()
            - start
            + wait_saved(scratch.engine, len(calls), 60 + len(calls) / 100)
        )
    finally:
        relay.stop()
        engine.dispose()
        sender.close()
    check_saved(scratch.engine, len(calls))
    return len(calls) / elapsed


def naive(scratch, calls):
    """Records per second with one task per record, sent as fast as possible."""
    sender = make_celery(scratch.settings())
    start = time.monotonic()
    for call in calls:
        sender.send_task(SAVE_USAGE, args=[[call.to_payload()]])
    sender.close()
    elapsed = (
        time.monotonic()
        - start
        + wait_saved(scratch.engine, len(calls), 60 + len(calls) / 20)
    )
    check_saved(scratch.engine, len(calls))
    return len(calls) / elapsed


# --- the database alone -----------------------------------------------------------

LEDGER_COLUMNS = (
    "message_id",
    "request_id",
    "user_id",
    "session_id",
    "model",
    "occurred_at",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "web_search_requests",
    "web_fetch_requests",
    "partial",
    "source",
    "cost",
    "price_ref",
    "saved_at",
)
SUMS = TOTAL_MEASURES
SESSION_SQL = (
    f"INSERT INTO session_usage (session_id, user_id, {', '.join(SUMS)}, "
    "first_at, last_at) VALUES %s ON CONFLICT (session_id, user_id) DO UPDATE SET "
    + ", ".join(f"{c} = session_usage.{c} + excluded.{c}" for c in SUMS)
    + ", first_at = least(session_usage.first_at, excluded.first_at)"
    ", last_at = greatest(session_usage.last_at, excluded.last_at)"
)
DAILY_SQL = (
    f"INSERT INTO daily_usage (user_id, day, model, {', '.join(SUMS)}) VALUES %s "
    "ON CONFLICT (user_id, day, model) DO UPDATE SET "
    + ", ".join(f"{c} = daily_usage.{c} + excluded.{c}" for c in SUMS)
)
LEDGER_SQL = (
    f"INSERT INTO usage_records ({', '.join(LEDGER_COLUMNS)}) VALUES %s "
    "ON CONFLICT (message_id, request_id) DO NOTHING"
)


def prebuilt_batches(calls, batch_size):
    """Ledger rows, priced, and their per-session and per-day sums, per batch."""
    now = datetime.now(UTC)
    batches = []
    for i in range(0, len(calls), batch_size):
        part = calls[i : i + batch_size]
        ledger = [_ledger_tuple(c, price_call(c), now) for c in part]
        batches.append((ledger, _session_sums(part), _daily_sums(part)))
    return batches


def _ledger_tuple(call, price, now):
    row = call.to_payload() | {"cost": price.cost, "price_ref": price.ref}
    row.update(occurred_at=call.occurred_at, saved_at=now)
    return tuple(row[c] for c in LEDGER_COLUMNS)


def _sums(call):
    cost = price_call(call).cost
    return [
        1,
        int(cost is None),
        call.input_tokens,
        call.output_tokens,
        call.cache_creation_tokens,
        call.cache_read_tokens,
        call.web_search_requests,
        cost or Decimal(0),
    ]


def _add(into, key, call, extra=()):
    sums = _sums(call)
    if key not in into:
        into[key] = [*sums, *extra]
        return
    row = into[key]
    for n, value in enumerate(sums):
        row[n] += value
    if extra:
        row[-2] = min(row[-2], extra[0])
        row[-1] = max(row[-1], extra[1])


def _session_sums(calls):
    into = {}
    for c in calls:
        _add(into, (c.session_id, c.user_id), c, (c.occurred_at, c.occurred_at))
    return sorted((*key, *row) for key, row in into.items())


def _daily_sums(calls):
    into = {}
    for c in calls:
        _add(into, (c.user_id, c.occurred_at.date(), c.model), c)
    return sorted((*key, *row) for key, row in into.items())


def raw_sql(scratch, calls, batch_size):
    """Records per second for plain batched upserts, rows built beforehand."""
    batches = prebuilt_batches(calls, batch_size)
    conn = scratch.engine.raw_connection()
    try:
        cursor = conn.cursor()
        start = time.monotonic()
        for ledger, sessions, days in batches:
            execute_values(cursor, LEDGER_SQL, ledger, page_size=batch_size)
            execute_values(cursor, SESSION_SQL, sessions, page_size=batch_size)
            execute_values(cursor, DAILY_SQL, days, page_size=batch_size)
            conn.commit()
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    check_saved(scratch.engine, len(calls))
    return len(calls) / elapsed


def direct(scratch, calls, batch_size):
    """Records per second for ``save_calls`` in transactions of ``batch_size``."""
    factory = make_session_factory(scratch.engine)
    start = time.monotonic()
    for i in range(0, len(calls), batch_size):
        with unit_of_work(factory) as session:
            save_calls(session, calls[i : i + batch_size])
    elapsed = time.monotonic() - start
    check_saved(scratch.engine, len(calls))
    return len(calls) / elapsed


# --- the benchmark -------------------------------------------------------------


def _fresh(scratch, count):
    scratch.truncate()
    return make_calls(count, add_users(scratch.engine))


def run(scratch, profile="full", runs=3):
    """Measure the save path and both baselines ``runs`` times; return figures."""
    size = SIZES[profile]
    samples = {"raw": [], "direct": [], "naive": []}
    e2e = {(w, b): [] for w in WORKERS for b in size["batch_sizes"]}
    for n in range(runs):
        log("save path run %d/%d", n + 1, runs)
        _measure(scratch, size, samples, e2e)
    return _figures(size, samples, e2e)


def _measure(scratch, size, samples, e2e):
    records, raw_batch = size["records"], size["raw_batch"]
    samples["raw"].append(raw_sql(scratch, _fresh(scratch, records), raw_batch))
    log("  raw SQL, %d a transaction: %.0f records/s", raw_batch, samples["raw"][-1])
    calls = _fresh(scratch, size["direct"])
    samples["direct"].append(direct(scratch, calls, raw_batch))
    log("  save_calls, %d a transaction: %.0f/s", raw_batch, samples["direct"][-1])
    for (pool, concurrency), batch_sizes in _by_worker(e2e):
        worker = scratch.worker(pool, concurrency)
        try:
            for batch in batch_sizes:
                rate = end_to_end(scratch, _fresh(scratch, records), batch)
                e2e[((pool, concurrency), batch)].append(rate)
                log("  end to end, %s x%d, relay batch %d: %.0f records/s",
                    pool, concurrency, batch, rate)  # fmt: skip
            samples["naive"].append(naive(scratch, _fresh(scratch, size["naive"])))
            log("  one task a record: %.0f records/s", samples["naive"][-1])
        finally:
            scratch.stop(worker)


def _by_worker(e2e):
    grouped = {}
    for workers, batch in e2e:
        grouped.setdefault(workers, []).append(batch)
    return grouped.items()


def _figures(size, samples, e2e):
    raw = f"raw batched SQL upserts, {size['raw_batch']} a transaction"
    figures = [
        Figure(
            NAME,
            f"end to end, worker {pool} x{concurrency}, relay batch {batch}",
            "records/s",
            rates,
            baseline=raw,
            baseline_samples=samples["raw"],
            goal=Goal("ratio", ">=", 0.5),
            note=f"{size['records']:,} records, exactly once",
        )
        for ((pool, concurrency), batch), rates in e2e.items()
    ]
    figures.append(
        Figure(
            NAME,
            f"save_calls alone, {size['raw_batch']} a transaction",
            "records/s",
            samples["direct"],
            baseline=raw,
            baseline_samples=samples["raw"],
        )
    )
    pool, concurrency = WORKERS[0]
    figures.append(
        Figure(
            NAME,
            f"one task a record (naive), worker {pool} x{concurrency}",
            "records/s",
            samples["naive"],
            baseline=raw,
            baseline_samples=samples["raw"],
            note=f"{size['naive']:,} records",
        )
    )
    return figures
