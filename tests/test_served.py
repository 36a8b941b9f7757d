"""Tally as it is served: the gunicorn gevent worker `scripts/run`, the Dockerfile
and compose start, against the real PostgreSQL, Redis, worker and simulator.
"""

import signal
import subprocess
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text

from app.db import make_session_factory, unit_of_work
from app.runner import ROOT, web_command
from app.usage import outbox
from app.usage.records import CallUsage
from tests.conftest import ServedProcess, wait_for, worker_env
from tests.faults import free_port
from tests.test_chat_end_to_end import ledger


class Served(ServedProcess):
    """``web_command`` in a process of its own, on a loopback port."""

    name = "gunicorn"

    def __init__(self, settings, simulator, log_path, wait=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/chat"
        self.log = open(log_path, "wb")  # noqa: SIM115 (kept open for the process)
        self.log_path = log_path
        env = worker_env(
            settings,
            TALLY_ANTHROPIC_BASE_URL=simulator.url,
            TALLY_CHATS_PER_MINUTE="0",
            TALLY_OUTBOX_RELAY_SECONDS="1",
            TALLY_DATA_DIR=str(log_path.parent / "data"),
        )
        self.proc = subprocess.Popen(
            web_command("127.0.0.1", self.port, connections=100),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for(self.up, timeout=60, message="gunicorn serving")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def served(settings, simulator, tmp_path, db):
    server = Served(settings, simulator, tmp_path / "gunicorn.log")
    yield server
    server.stop()


def test_twenty_chats_at_once_are_each_saved_once(served, worker, db):
    clients = [served.sign_in(f"crowd{n}") for n in range(20)]
    ends = [None] * len(clients)

    def chat(n):
        ends[n] = clients[n].chat(f"tokens:{n + 1} delay:10 hello")[-1]

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for client in clients:
        client.close()

    assert [end["usage"]["output_tokens"] for end in ends] == list(range(1, 21))
    records = wait_for(lambda: len(ledger(db)) == 20 and ledger(db), timeout=60)
    assert sorted(r["message_id"] for r in records) == sorted(
        end["message_id"] for end in ends
    )
    assert sum(r["output_tokens"] for r in records) == 210
    with db.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM session_usage")) == 20
        assert conn.scalar(text("SELECT sum(calls) FROM daily_usage")) == 20


def test_a_query_waiting_on_a_lock_does_not_stall_the_other_sockets(served, db):
    waiting, streaming = served.sign_in("waiting"), served.sign_in("streaming")
    streaming.ws.settimeout(15)
    with db.connect() as conn, conn.begin():
        # The outbox is locked: a finished call's transaction waits on it.
        conn.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
        waiting.send(type="chat", text="tokens:1 finish now", session_id=None)
        waiting.until("token_update")
        wait_for(lambda: _waiting_on_a_lock(db), message="the call's insert waiting")
        # Meanwhile another socket's reply streams through the same process.
        streaming.send(type="chat", text="tokens:5 delay:10 go on", session_id=None)
        seen = streaming.until("text")
        assert seen[-1]["type"] == "text"
    assert waiting.until("end")[-1]["usage"]["output_tokens"] == 1
    assert streaming.until("end")[-1]["usage"]["output_tokens"] == 5
    waiting.close()
    streaming.close()


def _waiting_on_a_lock(db):
    with db.connect() as conn:
        return conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO outbox%'"
            )
        )


def test_sigterm_cuts_a_reply_records_it_and_stops(served, worker, simulator, db):
    client = served.sign_in("stopping")
    try:
        _cut_by_sigterm(served, client, simulator, db)
    finally:
        client.close()


def _cut_by_sigterm(served, client, simulator, db):
    abandoned = simulator.streams_abandoned()
    client.send(type="chat", text="tokens:3000 delay:5 a long story", session_id=None)
    client.until("text")
    served.proc.send_signal(signal.SIGTERM)

    frames = client.until("end")
    assert next(f for f in frames if f["type"] == "error")["code"] == "server_stopping"
    assert frames[-1]["partial"] is True
    opcode, data = client.ws.recv_data(control_frame=True)
    assert (opcode, int.from_bytes(data[:2], "big")) == (8, 1001)
    assert served.proc.wait(timeout=30) == 0
    wait_for(lambda: simulator.streams_abandoned() == abandoned + 1)
    (record,) = wait_for(lambda: ledger(db), message="the cut call saved")
    assert record["partial"] is True
    assert record["message_id"] == frames[-1]["message_id"]
    assert "Traceback" not in served.output()


def test_records_waiting_at_start_are_sent_before_any_request(
    settings, simulator, worker, db, tmp_path
):
    factory = make_session_factory(db)
    with db.begin() as conn:
        user_id = conn.scalar(
            text(
                "INSERT INTO users (username, role, disabled, created_at)"
                " VALUES ('wanda', 'user', false, now()) RETURNING id"
            )
        )
    waiting = [
        CallUsage(
            message_id=f"msg_waiting_{n}",
            user_id=user_id,
            session_id="s-waiting",
            model="claude-sonnet-4-5",
            occurred_at=datetime(2026, 12, 4, 8, 0, tzinfo=UTC),
            input_tokens=1000,
            output_tokens=100 * n,
        )
        for n in (1, 2)
    ]
    with unit_of_work(factory) as session:
        for call in waiting:
            outbox.add(session, call)
    # Nobody opens a page: the server alone must send them.
    server = Served(settings, simulator, tmp_path / "gunicorn.log", wait=False)
    try:
        records = wait_for(lambda: len(ledger(db)) == 2 and ledger(db), timeout=60)
    finally:
        server.stop()
    assert sorted(r["output_tokens"] for r in records) == [100, 200]
    # $3 per million input tokens and $15 per million output tokens.
    assert sum(r["cost"] for r in records) == Decimal("0.0105")
