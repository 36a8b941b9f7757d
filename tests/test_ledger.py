"""The ledger's one-statement save on PostgreSQL: new rows only, bad rows refused."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DataError

from app.db import unit_of_work
from app.models import DailyUsage, SessionUsage, UsageRecord, User
from app.usage.records import CallUsage
from workers.ledger import save_calls


@pytest.fixture
def session_factory(app):
    return app.extensions["tally.db"]


def user(session_factory, name="ledger-user"):
    with unit_of_work(session_factory) as session:
        found = User(username=name)
        session.add(found)
        session.flush()
        return found.id


def call(user_id, message_id, **fields):
    values = dict(
        message_id=message_id,
        user_id=user_id,
        session_id="s-ledger",
        model="claude-sonnet-4-5",
        # 23:30 in UTC is the next day in Paris: the daily row must be UTC's.
        occurred_at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
        input_tokens=1000,
        output_tokens=200,
    )
    return CallUsage(**(values | fields))


def totals(session_factory):
    with unit_of_work(session_factory) as session:
        ledger = session.execute(select(UsageRecord.message_id, UsageRecord.cost))
        sessions = session.execute(
            select(SessionUsage.calls, SessionUsage.cost, SessionUsage.first_at)
        )
        days = session.execute(
            select(DailyUsage.day, DailyUsage.calls, DailyUsage.unpriced_calls)
        )
        return sorted(ledger), list(sessions), list(days)


def test_a_batch_saved_twice_counts_once(session_factory):
    uid = user(session_factory)
    calls = [
        call(uid, "msg_l1"),
        call(uid, "msg_l2", occurred_at=datetime(2026, 3, 1, 8, tzinfo=UTC)),
        call(uid, "msg_l3", model="claude-unknown-9"),
    ]
    with unit_of_work(session_factory) as session:
        first = save_calls(session, calls)
    with unit_of_work(session_factory) as session:
        again = save_calls(session, [*calls, calls[0]])

    assert first == [("msg_l1", ""), ("msg_l2", ""), ("msg_l3", "")]
    assert again == []
    ledger, sessions, days = totals(session_factory)
    # Sonnet 4.5: $3 / M input, $15 / M output; the unknown model is unpriced.
    assert ledger == [
        ("msg_l1", Decimal("0.006")),
        ("msg_l2", Decimal("0.006")),
        ("msg_l3", None),
    ]
    assert sessions == [(3, Decimal("0.012"), datetime(2026, 3, 1, 8, tzinfo=UTC))]
    assert sorted(days) == [
        (datetime(2026, 3, 1).date(), 1, 1),
        (datetime(2026, 3, 1).date(), 2, 0),
    ]


def test_an_overlong_id_is_refused_not_cut(session_factory):
    uid = user(session_factory)
    with pytest.raises(DataError), unit_of_work(session_factory) as session:
        save_calls(session, [call(uid, "msg_ok"), call(uid, "m" * 129)])
    # The worker then saves the batch's records one by one; nothing half-saved.
    assert totals(session_factory) == ([], [], [])
