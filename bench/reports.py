"""Reports: the product's report and dashboard queries on a year of heavy usage.

The data is made in PostgreSQL itself (``generate_series``): ledger records over
1,000 users and a year, ten calls to a session, and the session and daily rows
derived from them by SQL, as the worker would have kept them. Each query is the
product's own function, timed end to end (SQL and row handling) before and after
the indexes of migration 0003; their EXPLAIN (ANALYZE, BUFFERS) plans are kept.
"""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, text

from app.api import queries
from app.api.filters import Filters
from app.db import make_session_factory, unit_of_work
from app.usage import reports
from bench.common import ROOT, Figure, Goal, log

NAME = "reports"
USERS = 1000
CALLS_PER_SESSION = 10
YEAR = (date(2025, 1, 1), date(2025, 12, 31))
INDEX_REVISION = "0003"
SIZES = {
    "smoke": dict(records=20_000, reps=2),
    "quick": dict(records=100_000, reps=5),
    "full": dict(records=10_000_000, reps=7),
}
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
# Dollars per million tokens: input, output, cache write, cache read.
RATES = {
    "claude-sonnet-4-5": (3, 15, 3.75, 0.3),
    "claude-haiku-4-5": (1, 5, 1.25, 0.1),
    "claude-opus-4-1": (15, 75, 18.75, 1.5),
}


# --- data -------------------------------------------------------------------


def _rate_case(position):
    whens = " ".join(
        f"WHEN '{model}' THEN {rates[position]}" for model, rates in RATES.items()
    )
    return f"CASE m {whens} END"


# Zero-padded ids reach the unique index in key order, so the B-tree only appends.
LEDGER_SQL = """
INSERT INTO usage_records (
    message_id, request_id, user_id, session_id, model, occurred_at,
    input_tokens, output_tokens, cache_creation_tokens, cache_creation_1h_tokens,
    cache_read_tokens, web_search_requests, web_fetch_requests, partial, source,
    cost, price_ref, saved_at)
SELECT 'msg_bench_' || lpad(g::text, 9, '0'), '', u,
       'session-' || lpad(s::text, 8, '0'), m, at,
       i, o, cw, 0, cr, 0, 0, false, 'chat',
       ((i * {rin} + o * {rout} + cw * {rcw} + cr * {rcr}) / 1000000.0)
           ::numeric(24, 12),
       'bench', at
FROM (
    SELECT g, s, 1 + s % {users} AS u, m,
           timestamptz '2025-01-01 00:00+00'
             + ((s * 7919) % 524160) * interval '1 minute'
             + (g % {per}) * interval '2 minutes' AS at,
           500 + (g * 37) % 5000 AS i, 50 + (g * 13) % 2000 AS o,
           CASE WHEN g % 7 = 0 THEN 2000 ELSE 0 END AS cw,
           (g % 4) * 1000 AS cr
    FROM (
        SELECT g, g / {per} AS s,
               (ARRAY{models})[1 + (g / {per}) % 3] AS m
        FROM generate_series({first}::bigint, {last}) AS g
    ) AS numbered
) AS calls
"""

SESSIONS_SQL = """
INSERT INTO session_usage (
    session_id, user_id, calls, unpriced_calls, input_tokens, output_tokens,
    cache_creation_tokens, cache_read_tokens, web_search_requests, cost,
    first_at, last_at)
SELECT session_id, min(user_id), count(*), count(*) FILTER (WHERE cost IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cache_creation_tokens),
       sum(cache_read_tokens), sum(web_search_requests), coalesce(sum(cost), 0),
       min(occurred_at), max(occurred_at)
FROM usage_records GROUP BY session_id
"""

DAILY_SQL = """
INSERT INTO daily_usage (
    user_id, day, model, calls, unpriced_calls, input_tokens, output_tokens,
    cache_creation_tokens, cache_read_tokens, web_search_requests, cost)
SELECT user_id, (occurred_at AT TIME ZONE 'UTC')::date, model, count(*),
       count(*) FILTER (WHERE cost IS NULL), sum(input_tokens), sum(output_tokens),
       sum(cache_creation_tokens), sum(cache_read_tokens), sum(web_search_requests),
       coalesce(sum(cost), 0)
FROM usage_records GROUP BY 1, 2, 3
"""


USERS_SQL = (
    "INSERT INTO users (username, role, disabled, created_at) "
    f"SELECT 'user' || g, 'user', false, now() FROM generate_series(1, {USERS}) AS g"
)


def ledger_sql(first, last):
    """Ledger records numbered ``first`` to ``last``, whole sessions only."""
    models = "[" + ", ".join(f"'{m}'" for m in MODELS) + "]"
    return LEDGER_SQL.format(
        users=USERS,
        per=CALLS_PER_SESSION,
        first=first,
        last=last,
        models=models,
        rin=_rate_case(0),
        rout=_rate_case(1),
        rcw=_rate_case(2),
        rcr=_rate_case(3),
    )


def generate(engine, records, parts=2):
    """Fill the scratch database; return the seconds it took."""
    start = time.monotonic()
    _in_parallel(engine, [USERS_SQL])
    # INSERT ... SELECT runs on one core: one statement per core fills both.
    step = -(-records // parts // CALLS_PER_SESSION) * CALLS_PER_SESSION
    slices = [(a, min(a + step, records) - 1) for a in range(0, records, step)]
    _in_parallel(engine, [ledger_sql(a, b) for a, b in slices])
    log("  %d ledger records in %.0f s", records, time.monotonic() - start)
    _in_parallel(engine, [SESSIONS_SQL, DAILY_SQL])
    settle(engine)
    return time.monotonic() - start


def settle(engine):
    """Fresh statistics, and the written pages flushed before anything is timed.

    Otherwise the checkpoint after a bulk write lands in the middle of a timing.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
        conn.execute(text("CHECKPOINT"))


def _in_parallel(engine, statements):
    def run(sql):
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text(sql))

    with ThreadPoolExecutor(len(statements)) as pool:
        for done in [pool.submit(run, sql) for sql in statements]:
            done.result()


# --- the queries ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One report the product answers, with its goal in milliseconds."""

    name: str
    goal_ms: float
    per_user: bool
    call: object  # (session, user_id, username) -> rows


def _filters(user_id, username, zone="UTC"):
    return Filters(user_id, username, YEAR[0], YEAR[1], ZoneInfo(zone))


CASES = (
    Case(
        "daily report, one user's year (flask usage daily --user)",
        100,
        True,
        lambda s, u, n: reports.daily(s, user_id=u, since=YEAR[0], until=YEAR[1]),
    ),
    Case(
        "API /usage/daily, one user's year",
        100,
        True,
        lambda s, u, n: queries.daily(s, _filters(u, n)),
    ),
    Case(
        "API /usage/sessions, one user, newest 100",
        100,
        True,
        lambda s, u, n: queries.sessions(s, _filters(u, n), 100),
    ),
    Case(
        "API /usage/models, one user's year",
        100,
        True,
        lambda s, u, n: queries.models(s, _filters(u, n)),
    ),
    Case(
        "API /usage/daily, one user's year, tz=Europe/Paris",
        100,
        True,
        lambda s, u, n: queries.daily(s, _filters(u, n, "Europe/Paris")),
    ),
    Case(
        "daily report, one user's year, Europe/Paris (summed in SQL)",
        100,
        True,
        lambda s, u, n: reports.daily(
            s, user_id=u, since=YEAR[0], until=YEAR[1], zone=ZoneInfo("Europe/Paris")
        ),
    ),
    Case(
        "sessions report, one user (flask usage sessions --user)",
        100,
        True,
        lambda s, u, n: reports.sessions(s, user_id=u),
    ),
    Case(
        "models report, one user (flask usage models --user)",
        100,
        True,
        lambda s, u, n: reports.models(s, user_id=u),
    ),
    Case(
        "monthly report, all users (flask usage monthly)",
        1000,
        False,
        lambda s, u, n: reports.monthly(s),
    ),
)


def time_case(factory, case, reps):
    """Milliseconds of each of ``reps`` calls, a different user each time."""
    times = []
    for rep in range(reps + 1):
        user_id = 1 + (rep * 397) % USERS
        with unit_of_work(factory) as session:
            start = time.perf_counter()
            case.call(session, user_id, f"user{user_id}")
            elapsed = (time.perf_counter() - start) * 1000
        if rep:  # the first call warms the connection and the caches
            times.append(elapsed)
    return times


@contextmanager
def captured(engine):
    """The SQL statements and parameters run on ``engine`` inside the block."""
    statements = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def explain(engine, factory, case):
    """EXPLAIN (ANALYZE, BUFFERS) of every statement ``case`` runs."""
    with captured(engine) as statements, unit_of_work(factory) as session:
        case.call(session, 1, "user1")
    plans = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            plans.append(f"{statement.strip()}\n{plan}")
        raw.rollback()
    finally:
        raw.close()
    return plans


# --- the benchmark ---------------------------------------------------------------


def _alembic(scratch):
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", scratch.url)
    return cfg


def has_index_revision(cfg):
    scripts = ScriptDirectory.from_config(cfg)
    return any(s.revision == INDEX_REVISION for s in scripts.walk_revisions())


def run(scratch, profile="full", runs=3, plans_out=None):
    """Time every case before and after migration 0003; return the figures."""
    size = SIZES[profile]
    # Unindexed queries take seconds each: a few calls make their baseline.
    reps, before_reps = size["reps"] * runs, min(3, size["reps"])
    cfg = _alembic(scratch)
    indexed = has_index_revision(cfg)
    scratch.truncate()
    if indexed:
        command.downgrade(cfg, _before(cfg))
    log("reports: generating %d ledger records", size["records"])
    generate(scratch.engine, size["records"])
    factory = make_session_factory(scratch.engine)
    before = {c.name: _timed(factory, c, before_reps, "before") for c in CASES}
    if indexed:
        start = time.monotonic()
        command.upgrade(cfg, "head")
        settle(scratch.engine)
        log("  migration 0003 took %.1f s", time.monotonic() - start)
        after = {c.name: _timed(factory, c, reps, "after") for c in CASES}
    else:
        after, before = before, {}
    if plans_out is not None:
        plans_out.extend(_plans(scratch.engine, factory))
    return _figures(size, before, after, indexed)


def _before(cfg):
    scripts = ScriptDirectory.from_config(cfg)
    return scripts.get_revision(INDEX_REVISION).down_revision


def _timed(factory, case, reps, label):
    try:
        times = time_case(factory, case, reps)
    except Exception as exc:  # a report others changed must not stop the run
        log("  %s (%s) FAILED: %r", case.name, label, exc)
        return []
    log("  %s (%s): median %.1f ms", case.name, label, statistics.median(times))
    return times


def _plans(engine, factory):
    found = []
    for case in CASES:
        try:
            found.append((case.name, explain(engine, factory, case)))
        except Exception as exc:
            found.append((case.name, [f"failed: {exc!r}"]))
    return found


def _figures(size, before, after, indexed):
    baseline = "before migration 0003" if indexed else "(no index migration)"
    return [
        Figure(
            NAME,
            case.name,
            "ms",
            after[case.name],
            baseline=baseline,
            baseline_samples=before.get(case.name, []),
            goal=Goal("value", "<=", case.goal_ms),
            note=f"{size['records']:,} records",
        )
        for case in CASES
    ]
