"""``flask usage`` reports and ``reprice``, on PostgreSQL and on the SQLite default.

Costs below are worked out by hand from the list prices in genai-prices 0.2.3
($ per million tokens: input / output / 5-minute cache write / cache read).
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app.db import unit_of_work
from app.models import DailyUsage, SessionUsage, UsageRecord, User
from app.usage import pricing, reports
from app.usage.records import CallUsage
from workers.ledger import save_calls

ROOT = Path(__file__).resolve().parent.parent
FUTURE = "claude-future-9"


@pytest.fixture(autouse=True)
def overrides_file(monkeypatch, tmp_path):
    """An overrides file of the test's own, empty until a test writes prices."""
    path = tmp_path / "overrides.json"
    path.write_text('{"models": {}}')
    monkeypatch.setenv(pricing.OVERRIDES_ENV, str(path))
    pricing.reload_overrides()
    yield path
    pricing.reload_overrides()


def at(iso):
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


def call(user_id, message_id, model, occurred_at, session_id="s-1", **tokens):
    return CallUsage(
        message_id=message_id,
        request_id=f"req-{message_id}",
        user_id=user_id,
        session_id=session_id,
        model=model,
        occurred_at=at(occurred_at),
        **tokens,
    )


def add_users(app, *names):
    with unit_of_work(app.extensions["tally.db"]) as session:
        users = [User(username=name) for name in names]
        session.add_all(users)
        session.flush()
        return [u.id for u in users]


def save(app, calls):
    with unit_of_work(app.extensions["tally.db"]) as session:
        return save_calls(session, calls)


def small_set(app):
    """Four calls of two users around the end of January, one of them unpriced."""
    alice, bob = add_users(app, "alice", "bob")
    save(
        app,
        [
            # 1,000 x $3 + 500 x $15 = $0.0105; 20:08 on the 24th in Los Angeles
            call(alice, "m1", "claude-sonnet-4-5", "2026-01-25T04:08:00", "s-a",
                 input_tokens=1000, output_tokens=500),
            # 7 x $1 + 3 x $5 + 1 x $0.10 = $0.0000221
            call(alice, "m2", "claude-haiku-4-5", "2026-01-25T10:00:00", "s-a",
                 input_tokens=7, output_tokens=3, cache_read_tokens=1),
            # 10 x $5 + 20 x $25 + 100 x $6.25 + 1,234 x $0.50 = $0.001792;
            # 19:00 on 31 January in Los Angeles
            call(bob, "m3", "claude-opus-4-6", "2026-02-01T03:00:00", "s-b",
                 input_tokens=10, output_tokens=20, cache_creation_tokens=100,
                 cache_read_tokens=1234),
            call(bob, "m4", FUTURE, "2026-02-01T05:00:00", "s-b",
                 input_tokens=100, output_tokens=10),
        ],
    )  # fmt: skip
    return alice, bob


def usage(app, *args):
    result = app.test_cli_runner().invoke(args=["usage", *args])
    assert result.exit_code == 0, result.output
    return result


def report(app, name, *args):
    return json.loads(usage(app, name, *args, "--format", "json").stdout)


def row(calls, inp, out, write, read, cost, unpriced=0):
    return {
        "calls": calls,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_creation_tokens": write,
        "cache_read_tokens": read,
        "total_tokens": inp + out + write + read,
        "cost": cost,
        "unpriced_calls": unpriced,
    }


# --- formats


def test_daily_csv_is_exact(app):
    small_set(app)
    result = usage(app, "daily", "--format", "csv")

    assert result.stdout.splitlines() == [
        "day,username,calls,input_tokens,output_tokens,cache_creation_tokens,"
        "cache_read_tokens,total_tokens,cost,unpriced_calls",
        "2026-01-25,alice,2,1007,503,0,1,1511,0.0105221,0",
        "2026-02-01,bob,2,110,30,100,1234,1474,0.001792,1",
    ]
    # The note is for people: on stderr, so that the CSV stays clean.
    assert result.stderr.startswith("note: 1 call is unpriced")
    assert "`flask usage reprice`" in result.stderr


def test_models_json_is_exact_and_an_unpriced_model_has_no_cost(app):
    small_set(app)
    assert report(app, "models") == [
        {"model": FUTURE, **row(1, 100, 10, 0, 0, None, unpriced=1)},
        {"model": "claude-haiku-4-5", **row(1, 7, 3, 0, 1, "0.0000221")},
        {"model": "claude-opus-4-6", **row(1, 10, 20, 100, 1234, "0.001792")},
        {"model": "claude-sonnet-4-5", **row(1, 1000, 500, 0, 0, "0.0105")},
    ]


def test_models_table_is_aligned_with_a_total_and_a_note(app):
    small_set(app)
    lines = usage(app, "models").stdout.splitlines()

    assert lines == [
        "model              calls  input  output  cache write  cache read"
        "  total tokens        cost  unpriced",
        "-----------------  -----  -----  ------  -----------  ----------"
        "  ------------  ----------  --------",
        "claude-future-9        1    100      10            0           0"
        "           110    unpriced         1",
        "claude-haiku-4-5       1      7       3            0           1"
        "            11  $0.0000221         0",
        "claude-opus-4-6        1     10      20          100       1,234"
        "         1,364  $0.0017920         0",
        "claude-sonnet-4-5      1  1,000     500            0           0"
        "         1,500  $0.0105000         0",
        "-----------------  -----  -----  ------  -----------  ----------"
        "  ------------  ----------  --------",
        "total                  4  1,117     533          100       1,235"
        "         2,985  $0.0123141         1",
        "note: 1 call is unpriced (no price for the model yet) and left out of the "
        "costs; `flask usage reprice` prices them once a price exists",
    ]


def test_sessions_and_users_json(app):
    small_set(app)
    assert report(app, "sessions") == [
        {
            "session_id": "s-b",
            "username": "bob",
            "first_at": "2026-02-01T03:00:00+00:00",
            "last_at": "2026-02-01T05:00:00+00:00",
            **row(2, 110, 30, 100, 1234, "0.001792", unpriced=1),
        },
        {
            "session_id": "s-a",
            "username": "alice",
            "first_at": "2026-01-25T04:08:00+00:00",
            "last_at": "2026-01-25T10:00:00+00:00",
            **row(2, 1007, 503, 0, 1, "0.0105221"),
        },
    ]
    sessions = report(app, "sessions", "--tz", "America/Los_Angeles", "--user", "bob")
    assert [(s["first_at"], s["last_at"]) for s in sessions] == [
        ("2026-01-31T19:00:00-08:00", "2026-01-31T21:00:00-08:00")
    ]
    assert report(app, "users") == [
        {"username": "alice", **row(2, 1007, 503, 0, 1, "0.0105221")},
        {"username": "bob", **row(2, 110, 30, 100, 1234, "0.001792", unpriced=1)},
    ]


def test_an_empty_report(app):
    assert usage(app, "daily").stdout.splitlines()[-1] == "(no usage)"
    assert report(app, "monthly") == []
    assert usage(app, "users", "--format", "csv").stdout.splitlines() == [
        "username,calls,input_tokens,output_tokens,cache_creation_tokens,"
        "cache_read_tokens,total_tokens,cost,unpriced_calls"
    ]


# --- time zones


def test_a_late_evening_in_los_angeles_is_the_previous_day(app):
    (alice,) = add_users(app, "alice")
    # 20 x $3 + 5 x $15 = $0.000135
    save(app, [call(alice, "m1", "claude-sonnet-4-5", "2026-01-25T04:08:00",
                    input_tokens=20, output_tokens=5)])  # fmt: skip
    one = row(1, 20, 5, 0, 0, "0.000135")

    assert report(app, "daily") == [{"day": "2026-01-25", "username": "alice", **one}]
    assert report(app, "daily", "--tz", "America/Los_Angeles") == [
        {"day": "2026-01-24", "username": "alice", **one}
    ]
    # --since and --until are days in the zone too.
    la_24th = ("--since", "2026-01-24", "--until", "2026-01-24")
    assert report(app, "users", *la_24th, "--tz", "America/Los_Angeles") == [
        {"username": "alice", **one}
    ]
    assert report(app, "users", *la_24th) == []
    assert report(app, "daily", "--since", "2026-01-25", "--until", "2026-01-25")


def test_months_are_cut_in_the_zone(app):
    small_set(app)
    alice = row(2, 1007, 503, 0, 1, "0.0105221")
    bob = row(2, 110, 30, 100, 1234, "0.001792", unpriced=1)

    assert report(app, "monthly") == [
        {"month": "2026-01", "username": "alice", **alice},
        {"month": "2026-02", "username": "bob", **bob},
    ]
    # Bob's calls at 03:00 and 05:00 UTC on 1 February are 31 January evening there.
    assert report(app, "monthly", "--tz", "America/Los_Angeles") == [
        {"month": "2026-01", "username": "alice", **alice},
        {"month": "2026-01", "username": "bob", **bob},
    ]
    assert report(app, "daily", "--tz", "America/Los_Angeles") == [
        {"day": "2026-01-24", "username": "alice", **row(1, 1000, 500, 0, 0, "0.0105")},
        {"day": "2026-01-25", "username": "alice", **row(1, 7, 3, 0, 1, "0.0000221")},
        {"day": "2026-01-31", "username": "bob", **bob},
    ]


def test_an_unknown_zone_and_bad_ranges_are_refused(app):
    runner = app.test_cli_runner()
    zone = runner.invoke(args=["usage", "daily", "--tz", "Mars/Olympus_Mons"])
    assert zone.exit_code == 2
    assert "unknown time zone 'Mars/Olympus_Mons'" in zone.output
    assert "IANA" in zone.output

    backwards = ["--since", "2026-02-01", "--until", "2026-01-01"]
    result = runner.invoke(args=["usage", "users", *backwards])
    assert result.exit_code == 2 and "is after --until" in result.output
    result = runner.invoke(args=["usage", "users", "--user", "nobody"])
    assert result.exit_code == 1 and "no user 'nobody'" in result.output


# --- the same figures on every path and in both databases


def spread_calls(user_ids):
    """200 calls, one every 3 h 37 min from 28 January, so that days, months and
    zones are cut everywhere; costs have up to 8 decimals."""
    models = ["claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-5", FUTURE]
    start = datetime(2026, 1, 28, tzinfo=UTC)
    calls = []
    for i in range(200):
        calls.append(
            CallUsage(
                message_id=f"spread-{i}",
                request_id=f"req-{i}",
                user_id=user_ids[i % len(user_ids)],
                session_id=f"s-{i % 7}",
                model=models[i % len(models)],
                occurred_at=start + i * timedelta(hours=3, minutes=37),
                input_tokens=i * 13 + 1,
                output_tokens=i * 7 + 3,
                cache_creation_tokens=i * 101 % 997,
                cache_read_tokens=i * 1009 % 4099 + 1,
                # Opus 4.6 in the US costs 1.1x: $0.55 per million cache reads.
                inference_geo="us" if i % 8 == 1 else None,
            )
        )
    return calls


REPORTS = [
    ("daily",),
    ("daily", "--from-ledger"),
    ("daily", "--tz", "America/Los_Angeles"),
    ("daily", "--tz", "Asia/Kolkata", "--since", "2026-02-03"),
    ("daily", "--tz", "Europe/Paris", "--user", "bob", "--until", "2026-02-10"),
    ("monthly",),
    ("monthly", "--from-ledger"),
    ("monthly", "--tz", "Pacific/Kiritimati"),
    ("monthly", "--tz", "America/Los_Angeles", "--user", "alice"),
    ("sessions", "--tz", "Australia/Adelaide"),
    ("sessions", "--since", "2026-02-05", "--until", "2026-02-09"),
    ("models", "--tz", "America/St_Johns", "--since", "2026-02-01"),
    ("users",),
    ("users", "--tz", "Asia/Kathmandu", "--until", "2026-02-14"),
]


def all_reports(app):
    return {args: usage(app, *args, "--format", "json").stdout for args in REPORTS}


def test_sqlite_gives_the_same_json_as_postgresql(app, sqlite_app):
    for target in (app, sqlite_app):
        small_set(target)
        save(target, spread_calls(ids_of(target, "alice", "bob")))

    on_postgresql, on_sqlite = all_reports(app), all_reports(sqlite_app)

    for args in REPORTS:
        assert json.loads(on_postgresql[args]), args
        assert on_sqlite[args] == on_postgresql[args], args
    # Unfiltered, every report adds up to the same total, whatever the zone.
    unfiltered = [a for a in REPORTS if not {"--user", "--since", "--until"} & set(a)]
    totals = [reports.total(decimal_rows(on_postgresql[a])) for a in unfiltered]
    assert all(t == totals[0] for t in totals), totals
    assert totals[0]["calls"] == 204 and totals[0]["unpriced_calls"] == 51


def ids_of(app, *names):
    with unit_of_work(app.extensions["tally.db"]) as session:
        by_name = dict(session.execute(select(User.username, User.id)).all())
    return [by_name[name] for name in names]


def decimal_rows(text):
    rows = json.loads(text)
    return [dict(r, cost=r["cost"] and Decimal(r["cost"])) for r in rows]


def test_money_sums_are_exact(app, sqlite_app):
    for target in (app, sqlite_app):
        (alice,) = add_users(target, "alice")
        calls = spread_calls([alice])
        prices = [pricing.price_call(c) for c in calls]
        # Costs of up to 9 decimals, which a float sum would not keep.
        places = {-p.cost.as_tuple().exponent for p in prices if p.priced}
        assert places == {5, 6, 7, 8, 9}
        priced = [p.cost for p in prices if p.priced]
        assert sum(priced, Decimal(0)) == Decimal("2.59098895")
        save(target, calls)

        (users,) = report(target, "users")
        assert (users["cost"], users["unpriced_calls"]) == ("2.59098895", 50)
        daily = report(target, "daily")
        assert sum(Decimal(d["cost"]) for d in daily) == Decimal("2.59098895")
        assert "ok" in usage(target, "verify").stdout


# --- reprice


def test_reprice_prices_a_model_once_it_has_a_price(app, db, overrides_file):
    (alice,) = add_users(app, "alice")
    save(
        app,
        [
            # 1,000,000 x $1 + 1,000 x $5 = $1.005
            call(alice, "known", "claude-haiku-4-5", "2026-03-01T10:00:00",
                 input_tokens=1_000_000, output_tokens=1000),
            call(alice, "future", FUTURE, "2026-03-01T11:00:00",
                 input_tokens=1234, output_tokens=567, cache_read_tokens=89),
        ],
    )  # fmt: skip
    (before,) = report(app, "daily")
    assert (before["cost"], before["unpriced_calls"]) == ("1.005", 1)
    assert usage(app, "reprice").stdout.startswith("priced 0 of 1 unpriced calls")

    overrides_file.write_text(
        json.dumps(
            {
                "models": {
                    FUTURE: [
                        {
                            "from": "2026-01-01",
                            "prices": {
                                "input_mtok": "2.5",
                                "output_mtok": "12.5",
                                "cache_read_mtok": "0.25",
                            },
                        }
                    ]
                }
            }
        )
    )
    pricing.reload_overrides()
    dry = usage(app, "reprice", "--dry-run").stdout
    # 1,234 x $2.50 + 567 x $12.50 + 89 x $0.25 = $0.01019475
    assert dry.splitlines() == [
        f"would price 1 of 1 unpriced calls ($0.01019475): {FUTURE} 1"
    ]
    assert report(app, "daily") == [before]

    out = usage(app, "reprice").stdout
    assert out.splitlines() == [
        f"priced 1 of 1 unpriced calls ($0.01019475): {FUTURE} 1",
        "re-derived 1 session row and 1 daily row from the ledger",
    ]
    with unit_of_work(app.extensions["tally.db"]) as session:
        record = session.scalar(
            select(UsageRecord).where(UsageRecord.message_id == "future")
        )
        assert record.cost == Decimal("0.01019475")
        assert record.price_ref == f"override {FUTURE}@2026-01-01"
        session_row = session.get(SessionUsage, ("s-1", record.user_id))
        daily_rows = session.scalars(select(DailyUsage).order_by(DailyUsage.model))
        assert [(d.model, d.cost, d.unpriced_calls) for d in daily_rows] == [
            (FUTURE, Decimal("0.01019475"), 0),
            ("claude-haiku-4-5", Decimal("1.005"), 0),
        ]
        assert (session_row.calls, session_row.unpriced_calls) == (2, 0)
        assert session_row.cost == Decimal("1.01519475")
        assert session_row.input_tokens == 1_001_234
        assert session_row.cache_read_tokens == 89
        assert session_row.first_at == at("2026-03-01T10:00:00")
        assert session_row.last_at == at("2026-03-01T11:00:00")
    assert "ok" in usage(app, "verify").stdout
    (after,) = report(app, "daily")
    assert (after["cost"], after["unpriced_calls"]) == ("1.01519475", 0)
    assert "note" not in usage(app, "daily").stdout
    assert usage(app, "reprice").stdout == "no unpriced calls\n"
    with db.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM usage_records")) == 2


def test_reprice_leaves_unknown_models_alone(app, sqlite_app):
    for target in (app, sqlite_app):
        (alice,) = add_users(target, "alice")
        save(target, [call(alice, "m", FUTURE, "2026-03-01T10:00:00", input_tokens=1)])
        out = usage(target, "reprice").stdout
        assert out.splitlines() == [
            "priced 0 of 1 unpriced calls ($0)",
            "1 call stays unpriced: add their models to the price overrides file "
            "(TALLY_PRICE_OVERRIDES), then run `flask usage reprice` again",
        ]
        assert report(target, "users")[0]["cost"] is None
