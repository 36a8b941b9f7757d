"""Fixtures: real PostgreSQL, real Redis, a real Celery worker process, the simulator.

One PostgreSQL database per test run, emptied before each test that uses it.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import websocket
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from app import config, create_app
from app.simulator.server import (
    create_simulator,
    requests_served,
    serve_in_thread,
    streams_abandoned,
    streams_stalled,
)
from celery_app import make_celery

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get(
    "TALLY_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432"
)
REDIS_URL = os.environ.get("TALLY_TEST_REDIS", "redis://127.0.0.1:6379/9")
JWT_SECRET = "test-secret-" + "x" * 40
TABLES = (
    "usage_records",
    "session_usage",
    "daily_usage",
    "outbox",
    "dead_letters",
    "chat_turns",
    "chat_sessions",
    "revoked_tokens",
    "users",
)


def wait_for(condition, timeout=30.0, interval=0.05, message="condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def streams_dir():
    return Path(os.environ.get("TALLY_STREAMS_DIR", ROOT.parent / "shared" / "streams"))


@pytest.fixture(scope="session")
def pg_url():
    name = f"tally_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_ADMIN}/{name}"
    alembic_cfg = Config(str(ROOT / "alembic.ini"))
    alembic_cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(alembic_cfg, "head")
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_engine(pg_url):
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(pg_engine):
    """An empty database; yields the engine for direct queries."""
    with pg_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return pg_engine


@pytest.fixture(scope="session")
def broker_url():
    client = redis.Redis.from_url(REDIS_URL)
    assert client.ping()
    client.close()
    return REDIS_URL


class Simulator:
    def __init__(self):
        self.app = create_simulator(streams_dir())
        self.server, self.url = serve_in_thread(self.app)

    def requests_served(self):
        return requests_served(self.app)

    def streams_abandoned(self):
        return streams_abandoned(self.app)

    def streams_stalled(self):
        return streams_stalled(self.app)


@pytest.fixture(scope="session")
def simulator():
    sim = Simulator()
    yield sim
    sim.server.shutdown()
    sim.server.server_close()


@pytest.fixture(scope="session")
def settings(pg_url, broker_url, simulator, tmp_path_factory):
    env = {
        "TALLY_ENV": "test",
        # The spool of this run, not of the checkout.
        "TALLY_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "TALLY_JWT_SECRET": JWT_SECRET,
        "TALLY_ANTHROPIC_BASE_URL": simulator.url,
        "TALLY_MODEL": "claude-sonnet-4-5",
        "TALLY_OUTBOX_RELAY_SECONDS": "1",
        # A queue of its own, so test runs side by side never take each other's tasks.
        "TALLY_QUEUE": f"tally.test.{uuid.uuid4().hex[:8]}",
    }
    return config.load(env)


def worker_env(settings, **extra):
    env = dict(os.environ)
    env.update(
        TALLY_ENV="test",
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL=settings.broker_url,
        TALLY_JWT_SECRET=settings.jwt_secret,
        TALLY_QUEUE=settings.queue,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


class WorkerProcess:
    """A real ``celery worker`` process; its log goes to a file for the test to read."""

    def __init__(self, settings, log_path, pool="solo", concurrency=1, extra_env=None):
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"test-{uuid.uuid4().hex[:6]}@%h",
        ]
        self.log = open(log_path, "wb")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=worker_env(settings, **(extra_env or {})),
        )
        wait_for(self.ready, timeout=60, message=f"celery worker ready ({log_path})")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
        return b"ready." in self.log_path.read_bytes()

    def output(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    proc = WorkerProcess(settings, tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def celery_sender(settings):
    return make_celery(settings)


@pytest.fixture
def app(settings, db, celery_sender):
    app = create_app(settings, celery=celery_sender)
    yield app
    # The first request started the outbox relay; it must not outlive the test.
    app.extensions["tally.relay"].stop()


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.ws_url = f"ws://127.0.0.1:{self.server.server_port}/ws/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        relay = self.app.extensions.get("tally.relay")
        if relay is not None:
            relay.stop()


@pytest.fixture
def live_server(app):
    server = LiveServer(app)
    yield server
    server.stop()


def login(app, username="alice"):
    response = app.test_client().post(
        "/api/auth/dev-login", json={"username": username}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


class ChatClient:
    """A websocket client speaking the chat protocol, as the page does."""

    def __init__(self, ws_url, token=None, header=None):
        self.ws = websocket.create_connection(ws_url, timeout=30, header=header or [])
        self.frames = []
        self.replying = False  # the last chat's reply has started
        if token is not None:
            self.send(type="auth", token=token)

    def send(self, **frame):
        if frame.get("type") == "chat":
            self.replying = False  # until this call's start frame comes
        self.ws.send(json.dumps(frame))

    def receive(self):
        frame = json.loads(self.ws.recv())
        self.frames.append(frame)
        if frame["type"] == "start":
            self.replying = True
        return frame

    def until(self, kind):
        """Frames up to and including the first of type ``kind``."""
        seen = []
        while True:
            frame = self.receive()
            seen.append(frame)
            if frame["type"] == kind:
                return seen
            if frame["type"] == "error" and kind == "end" and not self.replying:
                # Refused before any reply: no end frame will come.
                raise AssertionError(f"the call was refused: {frame}")

    def chat(self, text, session_id=None):
        self.send(type="chat", text=text, session_id=session_id)
        return self.until("end")

    def close(self):
        self.ws.close()
        self.ws.shutdown()  # close() leaves the socket open once the server closed


class ServedProcess:
    """A Tally process serving on a loopback port, driven over HTTP as a browser is.

    Subclasses start ``self.proc`` with its output in ``self.log_path``.
    """

    name = "the served process"
    url = proc = log_path = None

    def output(self):
        return self.log_path.read_text(errors="replace")

    def up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.output()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def sign_in(self, username):
        """A chat socket of ``username``, signed in through the development login."""
        request = urllib.request.Request(
            f"{self.url}/api/auth/dev-login",
            data=json.dumps({"username": username}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            token = json.load(reply)["access_token"]
        ws_url = self.url.replace("http://", "ws://", 1) + "/ws/chat"
        client = ChatClient(ws_url, token=token)
        assert client.receive()["type"] == "ready"
        return client


@pytest.fixture
def chat_client(live_server):
    clients = []

    def connect(username="alice", **kwargs):
        token = login(live_server.app, username)["access_token"]
        client = ChatClient(live_server.ws_url, token=token, **kwargs)
        clients.append(client)
        ready = client.receive()
        assert ready["type"] == "ready", ready
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def sqlite_app(tmp_path):
    """The app on a migrated SQLite file: the embedded default."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    alembic_cfg = Config(str(ROOT / "alembic.ini"))
    alembic_cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(alembic_cfg, "head")
    settings = config.load(
        {
            "TALLY_ENV": "test",
            "DATABASE_URL": url,
            "TALLY_DATA_DIR": str(tmp_path),
            "TALLY_JWT_SECRET": JWT_SECRET,
        }
    )
    app = create_app(settings)
    yield app
    app.extensions["tally.db"].kw["bind"].dispose()


def replace_settings(settings, **changes):
    return replace(settings, **changes)
