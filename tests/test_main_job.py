"""The main job on its embedded default, as `scripts/run` starts it: SQLite for the
database and the Celery broker, its own simulator, a real worker, gunicorn's gevent
worker serving the page. No PostgreSQL or Redis is used here.
"""

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from app.db import make_engine, make_session_factory, unit_of_work
from app.models import DailyUsage, UsageRecord
from app.runner import ROOT
from tests.conftest import ServedProcess, wait_for
from tests.faults import free_port

# Settings that would point the job away from its embedded default.
NOT_EMBEDDED = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "ANTHROPIC_API_KEY",
    "TALLY_ANTHROPIC_BASE_URL",
    "TALLY_ENV",
    "TALLY_JWT_SECRET",
    "TALLY_QUEUE",
)


@pytest.fixture
def main_job(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in NOT_EMBEDDED}
    env.update(TALLY_DATA_DIR=str(tmp_path / "instance"), TALLY_PORT=str(port))
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.runner", "--workers", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    job = Job(proc, f"http://127.0.0.1:{port}", tmp_path / "instance", log_path)
    try:
        wait_for(job.up, timeout=120, interval=0.2, message="the main job up")
        yield job
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Job(ServedProcess):
    """The running job: its process, page address, data folder and output."""

    name = "the main job"

    def __init__(self, proc, url, data_dir, log_path):
        self.proc, self.url = proc, url
        self.data_dir, self.log_path = data_dir, log_path


def test_the_main_job_chats_saves_and_stops(main_job):
    client = main_job.sign_in("newcomer")
    end = client.chat("tokens:7 hello")[-1]
    saved = client.until("usage_saved")[-1]
    client.close()

    engine = make_engine(f"sqlite:///{main_job.data_dir / 'tally.db'}")
    with unit_of_work(make_session_factory(engine)) as session:
        (record,) = session.scalars(select(UsageRecord)).all()
        (day,) = session.scalars(select(DailyUsage)).all()
        assert (record.message_id, record.output_tokens) == (end["message_id"], 7)
        assert record.cost == Decimal(end["cost"]) == Decimal(saved["cost"])
        assert (day.calls, day.cost) == (1, record.cost)
    engine.dispose()

    # Ctrl-C: everything it started stops, and it says so with a clean exit.
    main_job.proc.send_signal(signal.SIGINT)
    assert main_job.proc.wait(timeout=30) == 0
    assert "Traceback" not in main_job.output()


def test_a_wait_on_the_sqlite_file_holds_up_no_other_tab(main_job):
    streaming, quick = main_job.sign_in("streaming"), main_job.sign_in("quick")
    for client in (streaming, quick):
        client.ws.settimeout(15)
    # gevent cannot run other sockets while SQLite waits on a lock: threads can.
    assert "Using worker: gthread" in main_job.output()
    quick.chat("tokens:1 first")
    chat_id = next(f for f in quick.frames if f["type"] == "start")["session_id"]
    streaming.send(type="chat", text="tokens:60 delay:40 go on", session_id=None)
    streaming.until("text")
    lock = sqlite3.connect(main_job.data_dir / "tally.db", timeout=5)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        # Its session known, this call starts reading only; keeping its record
        # as it ends waits for the lock.
        quick.send(type="chat", text="tokens:1 quick", session_id=chat_id)
        quick.until("token_update")
        stamps = []
        while len(stamps) < 15:
            if streaming.receive()["type"] == "text":
                stamps.append(time.monotonic())
    finally:
        lock.rollback()
        lock.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert max(gaps) < 1.0
    assert quick.until("end")[-1]["usage"]["output_tokens"] == 1
    assert streaming.until("end")[-1]["usage"]["output_tokens"] == 60
    quick.close()
    streaming.close()
