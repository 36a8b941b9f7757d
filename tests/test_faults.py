"""Exactly once under faults: break the worker, Redis and PostgreSQL for real.

Each case drives chats through the websocket route and records through the
outbox, breaks one part of the pipeline while they flow, and then compares
every session and daily row with the ground truth summed from what was sent.
The PostgreSQL and Redis here are the suite's own (tests/faults.py), so the
servers other test runs share are never stopped.
"""

import contextlib
import json
import re
import time
import urllib.error
from dataclasses import replace

import pytest
from sqlalchemy import text

from app.db import unit_of_work
from app.models import OutboxEntry, User
from tests.conftest import ChatClient, login, wait_for
from tests.faults import (
    BlackHole,
    ChatLoad,
    PrivatePostgres,
    Stack,
    add_to_outbox,
    backlog,
    batch_figures,
    compare,
    create_database,
    in_thread,
    make_calls,
    report,
    running_private_redis,
    unfinished_tasks,
    users,
)
from workers.tasks import MAX_RETRIES, backoff


@pytest.fixture(scope="module")
def private_pg():
    pg = PrivatePostgres()
    try:
        yield pg, create_database(pg)
    finally:
        pg.close()


@pytest.fixture(scope="module")
def private_redis():
    yield from running_private_redis()


@pytest.fixture
def make_stack(private_pg, private_redis, simulator, tmp_path):
    pg, database_url = private_pg
    stacks = []

    def make(**options):
        stack = Stack(database_url, private_redis, simulator, tmp_path, **options)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
    # A case that failed mid-fault must not leave the next one without servers.
    if not pg.running():
        pg.start()
    if not private_redis.running():
        private_redis.start()


def chatters(prefix, count):
    return [f"{prefix}{n}" for n in range(count)]


def check_exactly_once(stack, figures, settled):
    """What every case must show once the fault is over."""
    assert figures.differences == [], figures.differences[:10]
    assert (figures.saved, figures.doubled, figures.cents_diff) == (figures.sent, 0, 0)
    assert settled, "records still waiting after the fault was over"
    health = stack.health()
    assert (health["outbox_depth"], health["dead_letters"]) == (0, 0), health
    verify = stack.app.test_cli_runner().invoke(args=["usage", "verify"])
    assert verify.exit_code == 0, verify.output


def kill_mid_load(stack, whole, saved_at_least):
    """SIGKILL once ``saved_at_least`` records are saved; return those unsaved."""
    wait_for(lambda: stack.saved() >= saved_at_least, timeout=120, interval=0.05)
    with contextlib.suppress(AssertionError):  # the load may be over: kill anyway
        wait_for(lambda: backlog(stack.engine)[1] > 0, timeout=10, interval=0.02)
    unsaved = backlog(stack.engine)[1]
    if whole:
        stack.workers.kill_worker()
        stack.workers.start()
    else:
        stack.workers.kill_pool_child()
    return unsaved


LOST_IN_POOL = b"Task handler raised error: WorkerLostError"


@pytest.mark.slow
def test_worker_killed_with_sigkill_during_the_load(make_stack):
    # Redis hands an unacknowledged task out again after 6 s; the outbox resends
    # whatever is still unsaved after 15 s.
    stack = make_stack(resend=15, worker_env={"TALLY_VISIBILITY_TIMEOUT": "6"})
    stack.workers.start()
    generated = make_calls(2400, users(stack.app, chatters("bulk", 4)), "kill", seed=1)
    chats = ChatLoad(stack.server, chatters("chat", 6), chats_each=100).start()
    loader = in_thread(
        add_to_outbox, stack.db, generated, stack.relay, chunk=40, pause=0.1
    )
    # Whole worker, one pool process, whole worker, one pool process, spread
    # over the 3,000 records.
    unsaved = [
        kill_mid_load(stack, n % 2 == 0, at)
        for n, at in enumerate((300, 1000, 1700, 2400))
    ]
    loader.join()
    chats.join()

    sent = generated + chats.calls
    settled = stack.settle(sent)
    figures = compare(stack.engine, sent, chats.windows)
    log = stack.workers.logs()
    report(
        "worker-sigkill",
        figures,
        chats=len(chats.calls),
        outbox_inserted=len(generated),
        kills="4 (2 whole workers, 2 pool processes)",
        handed_not_saved_at_kills=unsaved,
        tasks_held_by_killed_workers=[
            unfinished_tasks(w.log_path.read_bytes()) for w in stack.workers.all[:-1]
        ],
        tasks_cut_off_in_a_pool_process=log.count(LOST_IN_POOL),
        resent_by_outbox=sum(stack.handed) - len(sent),
        delivered_again=batch_figures(log)["again"],
    )
    check_exactly_once(stack, figures, settled)
    assert len(stack.workers.all) == 3


def crash_redis(stack, private_redis):
    """Kill Redis; start it again once the relay or a worker has seen it gone."""
    failures, log = len(stack.send_failures), stack.workers.logs()
    private_redis.kill()
    wait_for(
        lambda: (
            len(stack.send_failures) > failures
            or stack.workers.logs().count(LOST) > log.count(LOST)
        ),
        timeout=30,
    )
    private_redis.start()


LOST = b"Connection to broker lost"


@pytest.mark.slow
def test_redis_restarted_during_the_load(make_stack, private_redis):
    # Redis keeps nothing on disk here: the tasks it held when it died are gone,
    # and the outbox sends their records again after 8 s.
    stack = make_stack(resend=8)
    stack.relay.batch_size = 50
    stack.workers.start()
    bulk = users(stack.app, chatters("bulk", 4))
    steady, burst = make_calls(1400, bulk, "redis", 2), make_calls(800, bulk, "burst")
    chats = ChatLoad(stack.server, chatters("chat", 6), chats_each=60).start()
    loader = in_thread(
        add_to_outbox, stack.db, steady, stack.relay, chunk=40, pause=0.1
    )
    # First crash: the worker busy, holding tasks it has not acknowledged.
    wait_for(lambda: stack.saved() >= 300, timeout=60, interval=0.02)
    crash_redis(stack, private_redis)
    loader.join()
    # Second crash: a stalled worker, the burst's 16 tasks waiting in Redis.
    stack.workers.pause()
    add_to_outbox(stack.db, burst, stack.relay, chunk=len(burst))
    wait_for(lambda: stack.unsent("msg_burst_") == 0, timeout=30)
    queued = stack.queued()
    lost = stack.workers.logs().count(LOST)
    private_redis.kill()
    stack.workers.resume()
    wait_for(lambda: stack.workers.logs().count(LOST) > lost, timeout=30)
    private_redis.start()
    chats.join()

    sent = steady + burst + chats.calls
    settled = stack.settle(sent)
    figures = compare(stack.engine, sent, chats.windows)
    report(
        "redis-restart",
        figures,
        chats=len(chats.calls),
        outbox_inserted=len(steady) + len(burst),
        crashes=2,
        tasks_lost_with_redis=queued,
        failed_sends=len(stack.send_failures),
        resent_by_outbox=sum(stack.handed) - len(sent),
        delivered_again=batch_figures(stack.workers.logs())["again"],
    )
    check_exactly_once(stack, figures, settled)
    # The burst's 16 tasks waited in Redis when it died, but one: the paused
    # worker's blocking fetch, issued before the pause, may already hold it.
    assert queued >= 15
    assert sum(stack.handed) - len(sent) >= len(burst)
    # The same worker reconnected twice: losing Redis did not end it.
    assert len(stack.workers.all) == 1 and stack.workers.current.proc.poll() is None


OUTAGE_SECONDS = 20


@pytest.mark.slow
def test_postgres_stopped_for_20_seconds_during_the_load(
    make_stack, private_pg, simulator
):
    pg, _ = private_pg
    stack = make_stack(resend=10)
    # Small batches: many tasks are queued or retrying when the database goes.
    stack.relay.batch_size = 50
    stack.workers.start()
    before = ChatLoad(stack.server, chatters("early", 4), chats_each=40).start()
    before.join()
    # Replies of 6 s, asked for just before the database goes: they end in the
    # outage, and their records wait in the web app's spool.
    served = simulator.requests_served()
    during = ChatLoad(
        stack.server,
        chatters("during", 4),
        1,
        errors_shown=True,
        directives="tokens:60 delay:100",
    ).start()
    wait_for(lambda: simulator.requests_served() >= served + 4)
    generated = make_calls(2400, users(stack.app, chatters("bulk", 4)), "pg", 3)
    add_to_outbox(stack.db, generated, stack.relay, chunk=len(generated))
    # Stop it as soon as the worker is saving the 2,400: most are still to come.
    wait_for(lambda: stack.saved() >= len(before.calls) + 100, interval=0.02)
    unsaved = backlog(stack.engine)[0]
    pg.stop()
    stopped = time.monotonic()
    during.join(timeout=OUTAGE_SECONDS)
    ended_in_outage = time.monotonic() - stopped < OUTAGE_SECONDS
    # The fault itself: the database stays away for 20 s in all.
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    pg.start()
    outage = time.monotonic() - stopped
    after = ChatLoad(stack.server, chatters("late", 4), chats_each=40).start()
    after.join()

    chats = before.calls + during.calls + after.calls
    sent = generated + chats
    settled = stack.settle(sent)
    windows = before.windows | during.windows | after.windows
    figures = compare(stack.engine, sent, windows)
    log = stack.workers.logs()
    retries = re.findall(rb"attempt (\d+)/(\d+)", log)
    report(
        "postgres-stop-20s",
        figures,
        chats=len(chats),
        outage_s=f"{outage:.1f}",
        chats_ended_in_the_outage=len(during.calls),
        told=sorted({notice["code"] for notice in during.notices}),
        outbox_inserted=len(generated),
        unsaved_at_stop=unsaved,
        retries_logged=len(retries),
        highest_attempt=max((int(n) for n, _ in retries), default=0),
        delivered_again=batch_figures(log)["again"],
    )
    check_exactly_once(stack, figures, settled)
    # Those chats still ended, and told the user why their cost is not saved yet.
    assert ended_in_outage and len(during.calls) == len(during.notices) == 4
    assert unsaved >= 1000
    assert b"WARNING" in log and (b"1", b"9") in retries and (b"2", b"9") in retries
    assert b"giving up" not in log


def test_a_chat_sent_while_the_database_is_down_is_refused_not_billed(
    make_stack, private_pg, simulator
):
    pg, _ = private_pg
    stack = make_stack()
    token = login(stack.app, "dbdown")["access_token"]
    client = ChatClient(stack.server.ws_url, token=token)
    late = None
    try:
        assert client.receive()["type"] == "ready"
        served = simulator.requests_served()
        pg.stop()
        try:
            client.send(type="chat", text="tokens:5 hello")
            refused = client.receive()
            # A newcomer's socket cannot be signed in meanwhile: told, and closed.
            late = ChatClient(stack.server.ws_url, token=token)
            late_frame = late.receive()
            with pytest.raises(urllib.error.HTTPError) as health:
                stack.health()
        finally:
            pg.start()
        assert health.value.code == 503
        assert json.load(health.value) == {
            "status": "database_unavailable",
            "spooled": 0,
        }
        assert refused["type"] == "error"
        assert refused["code"] == "database_unavailable"
        assert late_frame["code"] == "database_unavailable"
        assert simulator.requests_served() == served  # no call to Claude, no bill
        # The same socket chats again once the database is back.
        frames = client.chat("tokens:5 again")
        assert frames[-1]["usage"]["output_tokens"] == 5
        assert backlog(stack.engine)[0] == 1
    finally:
        client.close()
        if late is not None:
            late.ws.close()


@pytest.mark.slow
def test_every_task_delivered_twice(make_stack):
    # No resends: every duplicate here is one the broker delivered.
    stack = make_stack(resend=300, concurrency=2)
    send = stack.relay.send
    stack.relay.send = lambda records: (send(records), send(records))
    stack.workers.start()
    generated = make_calls(1700, users(stack.app, chatters("bulk", 4)), "twice", 4)
    chats = ChatLoad(stack.server, chatters("chat", 6), chats_each=50).start()
    add_to_outbox(stack.db, generated, stack.relay, chunk=50, pause=0.05)
    chats.join()

    sent = generated + chats.calls
    settled = stack.settle(sent)
    wait_for(
        lambda: batch_figures(stack.workers.logs())["seen"] == 2 * len(sent),
        message="the workers to have seen every second delivery",
    )
    figures = compare(stack.engine, sent, chats.windows)
    batches = batch_figures(stack.workers.logs())
    report(
        "delivered-twice",
        figures,
        chats=len(chats.calls),
        outbox_inserted=len(generated),
        handed_to_broker=sum(stack.handed),
        saved_new=batches["new"],
        found_already_saved=batches["again"],
    )
    check_exactly_once(stack, figures, settled)
    assert sum(stack.handed) == 2 * len(sent)
    assert batches == {"seen": 2 * len(sent), "new": len(sent), "again": len(sent)}


@pytest.mark.slow
def test_broker_unreachable_when_chats_end(make_stack, private_redis):
    stack = make_stack(resend=300)
    stack.workers.start()
    normal = ChatLoad(stack.server, chatters("normal", 3), chats_each=20).start()
    normal.join()
    assert stack.settle(normal.calls)

    # Refused: nothing listens on the broker's port.
    private_redis.kill()
    down = ChatLoad(stack.server, chatters("down", 6), chats_each=25, keep_open=True)
    down.start().join(timeout=120)
    bulk = make_calls(1500, users(stack.app, chatters("bulk", 3)), "down", 8)
    add_to_outbox(stack.db, bulk, stack.relay)
    refused = stack.health()
    # Hanging: the port takes connections and never answers.
    hole = BlackHole(private_redis.port)
    try:
        slow = ChatLoad(stack.server, chatters("slow", 6), chats_each=10).start()
        slow.join(timeout=120)
        wait_for(lambda: any(took >= 4.5 for _, took in stack.send_failures))
        hanging = stack.health()
    finally:
        hole.close()
    private_redis.start()

    sent = normal.calls + down.calls + bulk + slow.calls
    settled = stack.settle(sent)
    down.wait_until_shown_saved()
    down.close()
    windows = normal.windows | down.windows | slow.windows
    figures = compare(stack.engine, sent, windows)
    slowest = max(down.end_seconds + slow.end_seconds)
    report(
        "broker-unreachable",
        figures,
        chats=len(normal.calls + down.calls + slow.calls),
        outbox_inserted=len(bulk),
        chats_while_refused=len(down.calls),
        chats_while_hanging=len(slow.calls),
        outbox_depth_while_down=f"{refused['outbox_depth']}/{hanging['outbox_depth']}",
        slowest_end_s=f"{slowest:.3f} (normal {max(normal.end_seconds):.3f})",
        failed_sends=len(stack.send_failures),
        longest_failed_send_s=f"{max(took for _, took in stack.send_failures):.1f}",
    )
    check_exactly_once(stack, figures, settled)
    # Every chat ended while the broker was away; none waited for it (a hanging
    # publish takes the 5 s socket timeout), and each record waited in the outbox.
    assert refused["outbox_depth"] == len(down.calls) + len(bulk) == 1650
    assert hanging["outbox_depth"] == 1650 + len(slow.calls) == 1710
    assert slowest < 2.0


def test_retries_outlast_a_20_second_outage_whatever_the_jitter():
    delays = [[backoff(n) for n in range(MAX_RETRIES)] for _ in range(2000)]
    shortest = min(sum(run) for run in delays)
    # Half of each delay is fixed: 0.5 + 1 + 2 + 4 + 8 + 16 + 30 + 30 seconds.
    assert shortest >= 91.5 > OUTAGE_SECONDS
    for run in delays:
        for n, delay in enumerate(run):
            assert min(60, 2**n) / 2 <= delay <= min(60, 2**n)


def test_a_refused_record_waits_as_a_dead_letter_until_replayed(make_stack):
    stack = make_stack(resend=2, pool="solo", concurrency=1)
    stack.workers.start()
    (alice,) = users(stack.app, ["alice"])
    good = make_calls(4, [alice], "dead", seed=5)
    # A user id that does not exist yet: the database refuses the record.
    orphan = replace(make_calls(1, [alice], "orphan", seed=6)[0], user_id=alice + 50)
    with unit_of_work(stack.db) as session:
        session.add(OutboxEntry(message_id="msg_invalid", payload=json.dumps(INVALID)))
    # One batch: the refused and the invalid record must not keep the rest out.
    add_to_outbox(stack.db, [good[0], good[1], orphan, good[2], good[3]], stack.relay)

    wait_for(
        lambda: stack.dead_letters() == 2 and backlog(stack.engine)[0] == 0,
        message="two dead letters and an empty outbox",
    )
    assert compare(stack.engine, good).differences == []
    assert (stack.health()["dead_letters"], stack.health()["outbox_depth"]) == (2, 0)
    assert b"refused by the database" in stack.workers.logs()

    with unit_of_work(stack.db) as session:
        session.add(User(id=alice + 50, username="late-owner"))
    runner = stack.app.test_cli_runner()
    replay = runner.invoke(args=["usage", "replay"])
    assert replay.exit_code == 0, replay.output
    assert "replayed 1 records (1 new); 1 invalid records stay dead letters" in (
        replay.output
    )
    figures = compare(stack.engine, [*good, orphan])
    assert figures.differences == []
    assert (figures.sent, figures.saved, figures.doubled) == (5, 5, 0)
    assert stack.health()["dead_letters"] == 1
    again = runner.invoke(args=["usage", "replay"])
    assert "replayed 0 records (0 new); 1 invalid records stay dead letters" in (
        again.output
    )
    assert runner.invoke(args=["usage", "verify"]).exit_code == 0


INVALID = {"message_id": "msg_invalid", "user_id": "nobody", "session_id": "s"}


def test_verify_fails_when_a_daily_row_is_changed_by_hand(make_stack):
    stack = make_stack(pool="solo", concurrency=1)
    stack.workers.start()
    calls = make_calls(30, users(stack.app, ["alice", "bob"]), "verify", seed=7)
    add_to_outbox(stack.db, calls, stack.relay)
    assert stack.settle(calls, timeout=30)
    runner = stack.app.test_cli_runner()
    assert runner.invoke(args=["usage", "verify"]).exit_code == 0

    with stack.engine.begin() as conn:
        user_id, day, model = conn.execute(
            text(
                "UPDATE daily_usage SET cost = cost + 0.01 WHERE (user_id, day, model)"
                " = (SELECT user_id, day, model FROM daily_usage"
                " WHERE cost > 0 ORDER BY day, model LIMIT 1)"
                " RETURNING user_id, day, model"
            )
        ).one()
    verify = runner.invoke(args=["usage", "verify"])

    assert verify.exit_code != 0
    assert "daily_usage" in verify.output and f"'{day}', '{model}'" in verify.output
    assert "1 rows differ from the ledger" in verify.output
    # The suite's own comparison sees the same cent.
    assert compare(stack.engine, calls).cents_diff == 1
