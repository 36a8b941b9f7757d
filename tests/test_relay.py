"""The outbox relay's hand-over from memory: claimed entries, and when the broker
or the database refuses them. Real PostgreSQL, a real Redis of the test's own.
"""

import base64
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import redis
from kombu.exceptions import OperationalError
from sqlalchemy import text

from app.db import make_engine, make_session_factory, unit_of_work
from app.runner import ROOT
from app.usage import outbox
from app.usage.outbox import Relay
from app.usage.records import CallUsage
from celery_app import SAVE_USAGE, make_celery
from tests.conftest import replace_settings
from tests.faults import free_port, running_private_redis


@pytest.fixture
def private_redis():
    yield from running_private_redis()


@pytest.fixture
def broker(settings, private_redis):
    """A Celery app publishing to the private Redis, and a way to read its queue."""
    mine = replace_settings(
        settings, broker_url=private_redis.url, queue="tally.relay-test"
    )
    celery = make_celery(mine)

    def send(records):
        celery.send_task(SAVE_USAGE, args=[records])

    def queued():
        """The record ids in the tasks waiting in the queue, in order."""
        client = redis.Redis.from_url(private_redis.url)
        try:
            messages = client.lrange(mine.queue, 0, -1)
        finally:
            client.close()
        ids = []
        for message in messages:
            args = json.loads(_body(message))[0]
            ids += [record["message_id"] for record in args[0]]
        return ids

    return send, queued


def _body(message):
    envelope = json.loads(message)
    return base64.b64decode(envelope["body"])


def call(n):
    return CallUsage(
        message_id=f"msg_relay_{n}",
        user_id=1,
        session_id="s-relay",
        model="claude-sonnet-4-5",
        occurred_at=datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
        input_tokens=100 + n,
        output_tokens=10,
    )


def claim(session_factory, calls):
    """Commit entries as the chat does when its process has a relay."""
    with unit_of_work(session_factory) as session:
        return [outbox.add(session, c, claimed=True) for c in calls]


def outbox_rows(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT message_id, sent_at IS NOT NULL, attempts FROM outbox")
        )
        return sorted(tuple(row) for row in rows)


def test_a_claimed_entry_is_sent_from_memory_and_no_sweep_sends_it_again(db, broker):
    send, queued = broker
    factory = make_session_factory(db)
    relay = Relay(factory, send, resend_after=300)
    ids = claim(factory, [call(1), call(2)])
    for entry_id, c in zip(ids, [call(1), call(2)], strict=True):
        relay.take(entry_id, c.to_payload())

    assert relay.send_handed() == 2
    # Claimed at insert: a sweep finds nothing due, so nothing goes twice.
    assert relay.run_once() == 0
    assert queued() == ["msg_relay_1", "msg_relay_2"]
    assert outbox_rows(db) == [("msg_relay_1", True, 1), ("msg_relay_2", True, 1)]


def test_entries_the_broker_refuses_are_unmarked_and_swept_once_it_is_back(
    db, broker, private_redis
):
    send, queued = broker
    factory = make_session_factory(db)
    relay = Relay(factory, send, resend_after=300)
    [entry_id] = claim(factory, [call(3)])
    relay.take(entry_id, call(3).to_payload())
    private_redis.kill()

    with pytest.raises(OperationalError):
        relay.send_handed()
    assert outbox_rows(db) == [("msg_relay_3", False, 1)]

    private_redis.start()
    assert relay.send_handed() == 0  # not kept in memory: the sweep has it
    relay.sweep()
    assert queued() == ["msg_relay_3"]
    assert outbox_rows(db) == [("msg_relay_3", True, 2)]


def test_with_broker_and_database_both_away_the_entries_wait_in_memory(
    db, broker, private_redis
):
    send, queued = broker
    # The relay's database is a port nobody listens on; the entry was committed
    # to the real one before it went away.
    away = make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    relay = Relay(make_session_factory(away), send, resend_after=300)
    ids = claim(make_session_factory(db), [call(4), call(5)])
    for entry_id, n in zip(ids, (4, 5), strict=True):
        relay.take(entry_id, call(n).to_payload())
    private_redis.kill()

    with pytest.raises(OperationalError):  # the publish's error, re-raised
        relay.send_handed()
    # Still claimed in the outbox, so no other relay sends them meanwhile.
    assert outbox_rows(db) == [("msg_relay_4", True, 1), ("msg_relay_5", True, 1)]

    private_redis.start()
    assert relay.send_handed() == 2
    assert queued() == ["msg_relay_4", "msg_relay_5"]
    away.dispose()


def test_chats_waking_the_relay_all_the_time_do_not_put_the_sweep_off(db, broker):
    send, queued = broker
    factory = make_session_factory(db)
    relay = Relay(factory, send, interval=0.5, resend_after=300)
    # Written without a wake, as another process's spool drain or import would.
    with unit_of_work(factory) as session:
        outbox.add(session, call(6))
    relay.start()
    try:
        n = 100
        # A chat finishing every 50 ms: the relay never waits out its interval.
        while "msg_relay_6" not in queued():
            n += 1
            assert n < 200, "the unclaimed entry was never swept"
            [entry_id] = claim(factory, [call(n)])
            relay.take(entry_id, call(n).to_payload())
            time.sleep(0.05)  # paces the chats; the loop waits on the condition
    finally:
        relay.stop()
    assert queued().count("msg_relay_6") == 1


EXITING = """
import sys
from app.db import make_engine, make_session_factory
from app.usage.outbox import Relay
from celery_app import SAVE_USAGE, make_celery
from tests.test_relay import call, claim

database_url, broker_url, queue = sys.argv[1:]
celery = make_celery()
celery.conf.broker_url = broker_url
celery.conf.task_default_queue = queue
factory = make_session_factory(make_engine(database_url))
# Chats finishing together are gathered for 30 s: longer than this process lives.
relay = Relay(factory, lambda r: celery.send_task(SAVE_USAGE, args=[r]), gather=30)
relay.start()
[entry_id] = claim(factory, [call(7)])
relay.take(entry_id, call(7).to_payload())
sys.exit(0)
"""


def test_a_process_exiting_sends_what_was_handed_to_its_relay(
    settings, db, broker, private_redis
):
    _, queued = broker
    done = subprocess.run(
        [sys.executable, "-c", EXITING, str(db.url.render_as_string(False)),
         private_redis.url, "tally.relay-test"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert queued() == ["msg_relay_7"]
    assert outbox_rows(db) == [("msg_relay_7", True, 1)]
