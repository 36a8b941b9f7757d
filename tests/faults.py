"""Fault-injection helpers: private servers, process control, load and ground truth.

The fault suite kills and stops servers, so it never touches the PostgreSQL and
Redis that other test runs share: it starts its own, on free loopback ports, in
a temporary folder, and removes them afterwards.
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import redis
import websocket
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from app import config, create_app
from app.db import unit_of_work
from app.models import TOTAL_MEASURES
from app.usage import outbox
from app.usage.pricing import price_call, utc_day
from app.usage.records import CallUsage
from celery_app import make_celery
from tests.conftest import (
    JWT_SECRET,
    ROOT,
    TABLES,
    ChatClient,
    LiveServer,
    WorkerProcess,
    login,
    wait_for,
)

PG_BIN = Path(os.environ.get("TALLY_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUMMED = TOTAL_MEASURES
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4")
# One record in 40 names a model without a price: it is counted, and unpriced.
UNPRICED_MODEL = "claude-tally-unpriced-1"
TASK_LINE = re.compile(rb"Task tally\.save_usage\[([0-9a-f-]+)\] (\w+)")
BATCH_LINE = re.compile(rb"usage batch: (\d+) records, (\d+) new, (\d+) already saved")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- private servers ---------------------------------------------------------


def _as_postgres(args):
    # PostgreSQL refuses to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class PrivatePostgres:
    """A PostgreSQL server of the suite's own, to stop and start at will."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="tally-faults-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        try:
            self._pg_ctl("initdb", "-o", "--auth=trust --username=postgres -E UTF8")
            self.start()
        except BaseException:
            self.close()
            raise

    def _pg_ctl(self, *args):
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]
        done = subprocess.run(
            _as_postgres(command),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=90,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stdout}{done.stderr}")

    def start(self):
        # fsync is off for speed: the suite stops the server, it never crashes
        # the machine under it.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        log = str(self.dir / "server.log")
        self._pg_ctl("start", "-w", "-t", "60", "-l", log, "-o", options)

    def stop(self):
        self._pg_ctl("stop", "-w", "-m", "fast")

    def running(self):
        return (self.data / "postmaster.pid").exists()

    def url(self, database="postgres"):
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def close(self):
        if self.running():
            self._pg_ctl("stop", "-w", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the suite's own; with ``appendonly`` off it forgets all."""

    def __init__(self, appendonly=False):
        self.dir = Path(tempfile.mkdtemp(prefix="tally-faults-redis-"))
        self.port = free_port()
        self.appendonly = appendonly
        self.proc = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        wait_for(self.ping, timeout=20, message=f"redis on port {self.port}")

    def ping(self):
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            return client.ping()
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def kill(self):
        """Stop at once, as a crash would: what was queued is gone."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=20)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def flush(self):
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def running_private_redis():
    """A ``PrivateRedis`` for a fixture to yield from; closed when the fixture ends."""
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.close()


class BlackHole:
    """A listener that takes connections and never answers: a broker that hangs."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.held = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self):
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                self.held.append(self.sock.accept()[0])

    def close(self):
        # close() alone leaves the port listening while accept() blocks on it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()


# --- workers -----------------------------------------------------------------


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Workers:
    """Celery worker processes started for one test, killed and replaced at will."""

    def __init__(self, settings, log_dir, pool="prefork", concurrency=2, env=None):
        self.settings, self.log_dir = settings, log_dir
        self.pool, self.concurrency, self.env = pool, concurrency, env or {}
        self.all = []

    @property
    def current(self):
        return self.all[-1]

    def start(self):
        path = self.log_dir / f"worker-{len(self.all) + 1}.log"
        worker = WorkerProcess(
            self.settings, path, self.pool, self.concurrency, extra_env=self.env
        )
        self.all.append(worker)
        return worker

    def kill_worker(self):
        """SIGKILL the worker and its pool: nothing gets to acknowledge or clean up."""
        worker = self.current
        for pid in [worker.proc.pid, *_children(worker.proc.pid)]:
            _kill(pid)
        worker.proc.wait(timeout=20)
        worker.log.close()

    def kill_pool_child(self):
        """SIGKILL a pool process, one on the CPU if any: a task's worker is lost."""
        pool = wait_for(lambda: _children(self.current.proc.pid), message="a pool")
        try:
            busy = wait_for(lambda: [p for p in pool if _running(p)], timeout=5)
        except AssertionError:
            busy = pool  # none caught working: kill one anyway
        _kill(busy[0])

    def pause(self):
        """SIGSTOP the worker and its pool: it takes no more tasks until resumed."""
        for pid in [self.current.proc.pid, *_children(self.current.proc.pid)]:
            _signal(pid, signal.SIGSTOP)

    def resume(self):
        for pid in [self.current.proc.pid, *_children(self.current.proc.pid)]:
            _signal(pid, signal.SIGCONT)

    def logs(self):
        return b"".join(w.log_path.read_bytes() for w in self.all)

    def stop(self):
        for worker in self.all:
            if worker.proc.poll() is not None:
                continue
            pool = _children(worker.proc.pid)
            for pid in [worker.proc.pid, *pool]:
                _signal(pid, signal.SIGCONT)  # a paused worker cannot shut down
            worker.stop()
            for pid in pool:
                _signal(pid, signal.SIGKILL)  # none outlives the test


def _running(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "R"


def _kill(pid):
    _signal(pid, signal.SIGKILL)


def _signal(pid, signum):
    with contextlib.suppress(ProcessLookupError):  # it ended already
        os.kill(pid, signum)


def unfinished_tasks(log):
    """Tasks a worker's log shows taken but never finished (its kill cut them off)."""
    done = _tasks(log, b"succeeded") | _tasks(log, b"raised")
    return len(_tasks(log, b"received") - done)


def _tasks(log, word):
    return {m.group(1) for m in TASK_LINE.finditer(log) if m.group(2) == word}


def batch_figures(log):
    """Records the workers saw, saved new, and found already saved (from their logs)."""
    seen = new = again = 0
    for records, fresh, saved in BATCH_LINE.findall(log):
        seen, new, again = seen + int(records), new + int(fresh), again + int(saved)
    return {"seen": seen, "new": new, "again": again}


# --- load --------------------------------------------------------------------


def make_calls(count, user_ids, tag, seed=0, per_session=12, days=3):
    """Records like the chat path's, spread over sessions, days and models."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    calls = []
    for n in range(count):
        if n % per_session == 0:
            session_id, user_id = f"{tag}-s{n // per_session}", rng.choice(user_ids)
        calls.append(_random_call(rng, n, tag, session_id, user_id, now, days))
    return calls


def _random_call(rng, n, tag, session_id, user_id, now, days):
    cache_write = rng.choice((0, 0, rng.randint(1, 5000)))
    at = now - timedelta(seconds=rng.uniform(0, days * 86400))
    if n % 50 == 7:
        # the last microsecond of a UTC day belongs to that day's row
        at = at.replace(hour=23, minute=59, second=59, microsecond=999999)
    return CallUsage(
        message_id=f"msg_{tag}_{n:06d}",
        user_id=user_id,
        session_id=session_id,
        model=UNPRICED_MODEL if n % 40 == 3 else rng.choice(MODELS),
        occurred_at=min(at, now),
        input_tokens=rng.randint(1, 30000),
        output_tokens=rng.randint(0, 4000),
        cache_creation_tokens=cache_write,
        cache_creation_1h_tokens=rng.choice((0, cache_write // 3)),
        cache_read_tokens=rng.choice((0, rng.randint(1, 60000))),
        web_search_requests=rng.choice((0, 0, 0, rng.randint(1, 4))),
    )


def add_to_outbox(session_factory, calls, relay=None, chunk=100, pause=0.0):
    """Commit records to the outbox as the chat path does, ``chunk`` per transaction."""
    for start in range(0, len(calls), chunk):
        with unit_of_work(session_factory) as session:
            for call in calls[start : start + chunk]:
                outbox.add(session, call)
        if relay is not None:
            relay.wake()
        if pause:
            time.sleep(pause)  # paces the load; nothing waits on a condition here


def users(app, names):
    """Sign ``names`` in through the development login; return their ids."""
    return [login(app, name)["user"]["id"] for name in names]


@dataclass
class ChatLoad:
    """Chats from several websocket clients at once, and what each was shown."""

    server: object
    usernames: list
    chats_each: int
    turns_per_session: int = 3
    keep_open: bool = False
    directives: str = ""  # added to every prompt, e.g. "delay:100"
    errors_shown: bool = False  # an error frame before `end` is expected, kept
    notices: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    end_seconds: list = field(default_factory=list)
    # The server stamps a call when Claude starts it: between these two moments.
    windows: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    clients: dict = field(default_factory=dict)  # client -> its message ids
    threads: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self):
        for n, name in enumerate(self.usernames):
            thread = threading.Thread(target=self._run, args=(name, n), daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def join(self, timeout=300):
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} chat clients still running after {timeout}s"
        assert not self.errors, self.errors[:5]
        return self

    def wait_until_shown_saved(self):
        """Read each open socket until the page was told every call is saved."""
        for client, message_ids in self.clients.items():
            wanted = set(message_ids)
            while wanted - _saved_frames(client):
                client.receive()

    def close(self):
        for client in self.clients:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                client.close()

    def _run(self, username, seed):
        try:
            self._chat_as(username, random.Random(seed))
        except Exception as exc:  # reported by join(), in the test's thread
            with self.lock:
                self.errors.append(f"{username}: {exc!r}")

    def _chat_as(self, username, rng):
        signed_in = login(self.server.app, username)
        client = ChatClient(self.server.ws_url, token=signed_in["access_token"])
        with self.lock:
            self.clients[client] = sent = []
        assert client.receive()["type"] == "ready"
        session_id = None
        for n in range(self.chats_each):
            if n % self.turns_per_session == 0:
                session_id = None
            text = f"tokens:{rng.randint(1, 60)} {self.directives} load {username} {n}"
            call = self._one_chat(client, signed_in["user"]["id"], text, session_id)
            session_id = call.session_id
            sent.append(call.message_id)
        if not self.keep_open:
            client.close()

    def _one_chat(self, client, user_id, text, session_id):
        before, started = datetime.now(UTC), time.monotonic()
        frames = client.chat(text, session_id)
        elapsed, after = time.monotonic() - started, datetime.now(UTC)
        errors = [f for f in frames if f["type"] == "error"]
        assert self.errors_shown or not errors, errors
        call = shown_call(frames, user_id, before, after)
        with self.lock:
            self.notices += errors
            self.calls.append(call)
            self.windows[call.message_id] = (before, after)
            self.end_seconds.append(elapsed)
        return call


def _saved_frames(client):
    return {f["message_id"] for f in client.frames if f["type"] == "usage_saved"}


def shown_call(frames, user_id, before, after):
    """The usage record as the page showed it: ids from `start`, counts from `end`."""
    start = next(f for f in frames if f["type"] == "start")
    end = frames[-1]
    usage = end["usage"]
    if utc_day(before) != utc_day(after):
        raise AssertionError("a chat crossed midnight UTC; its day is ambiguous")
    call = CallUsage(
        message_id=start["message_id"],
        user_id=user_id,
        session_id=start["session_id"],
        model=start["model"],
        occurred_at=before,
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cache_creation_tokens=usage["cache_creation_tokens"],
        cache_read_tokens=usage["cache_read_tokens"],
        partial=end["partial"],
    )
    # The cost the user was shown is the price of exactly these counts.
    assert _money(end["cost"]) == price_call(call).cost, (end, call)
    return call


def _money(value):
    return None if value is None else Decimal(value)


# --- ground truth ------------------------------------------------------------


def _empty(**extra):
    return dict.fromkeys(SUMMED, 0) | {"cost": Decimal(0)} | extra


def _add(totals, call, cost):
    totals["calls"] += 1
    if cost is None:
        totals["unpriced_calls"] += 1
    else:
        totals["cost"] += cost
    totals["input_tokens"] += call.input_tokens
    totals["output_tokens"] += call.output_tokens
    totals["cache_creation_tokens"] += call.cache_creation_tokens
    totals["cache_read_tokens"] += call.cache_read_tokens
    totals["web_search_requests"] += call.web_search_requests


def expected_rows(calls, windows=None):
    """Session and daily rows as they must be, summed here from the records sent.

    A session's first and last call times are ranges ``(earliest, latest)``: a
    chat's time is known only to lie within its window in ``windows``.
    """
    sessions, daily = {}, {}
    for call in calls:
        cost = price_call(call).cost
        row = sessions.setdefault(call.session_id, _empty(user_id=call.user_id))
        _add(row, call, cost)
        at = (windows or {}).get(call.message_id, (call.occurred_at,) * 2)
        row["first_at"] = _bound(min, row.get("first_at", at), at)
        row["last_at"] = _bound(max, row.get("last_at", at), at)
        key = (call.user_id, utc_day(call.occurred_at), call.model)
        _add(daily.setdefault(key, _empty()), call, cost)
    return sessions, daily


def _bound(pick, a, b):
    return (pick(a[0], b[0]), pick(a[1], b[1]))


def _rows(conn, sql, key):
    return {key(row): dict(row._mapping) for row in conn.execute(text(sql))}


def saved_keys(engine):
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, request_id FROM usage_records"))
        return Counter(tuple(row) for row in rows)


def count_saved(engine, calls):
    keys = saved_keys(engine)
    return sum(1 for call in calls if call.key in keys)


@dataclass
class Figures:
    sent: int
    saved: int
    doubled: int
    cents_diff: Decimal
    differences: list

    def line(self, fault, **notes):
        extra = ", ".join(f"{name}={value}" for name, value in notes.items())
        return (
            f"fault={fault} sent={self.sent} saved={self.saved} "
            f"doubled={self.doubled} cents_diff={_plain(self.cents_diff)} ({extra})"
        )


def _plain(amount):
    return f"{amount.normalize():f}" if amount else "0"


def compare(engine, calls, windows=None):
    """Every session and daily row against the ground truth, and the figures."""
    sessions, daily = expected_rows(calls, windows)
    with engine.connect() as conn:
        actual_sessions = _rows(
            conn, "SELECT * FROM session_usage", lambda r: r.session_id
        )
        actual_daily = _rows(
            conn, "SELECT * FROM daily_usage", lambda r: (r.user_id, r.day, r.model)
        )
    keys = saved_keys(engine)
    sent = {call.key for call in calls}
    differences = [f"ledger: {k} was never sent" for k in keys if k not in sent]
    cents, doubled = Decimal(0), sum(n - 1 for n in keys.values())
    excess = []
    for table, expected, actual in (
        ("session_usage", sessions, actual_sessions),
        ("daily_usage", daily, actual_daily),
    ):
        table_excess = 0
        for key in expected.keys() | actual.keys():
            want, got = expected.get(key, _empty()), actual.get(key, _empty())
            differences += _differences(table, key, want, got)
            cents += abs(want["cost"] - got["cost"]) * 100
            table_excess += max(0, got["calls"] - want["calls"])
        excess.append(table_excess)
    return Figures(
        sent=len(sent),
        saved=sum(1 for key in sent if key in keys),
        doubled=doubled + max(excess),
        cents_diff=cents,
        differences=differences,
    )


def _differences(table, key, want, got):
    names = [*SUMMED, *(n for n in ("user_id", "first_at", "last_at") if n in want)]
    return [
        f"{table} {key}: {name} is {got.get(name)}, should be {want[name]}"
        for name in names
        if not _matches(got.get(name), want[name])
    ]


def _matches(value, wanted):
    if isinstance(wanted, tuple):
        return value is not None and wanted[0] <= value <= wanted[1]
    return value == wanted


def backlog(engine):
    """Outbox entries: all of them, and those handed to the broker but not saved."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*), count(sent_at) FROM outbox")).one()


def report(fault, figures, **notes):
    """Print the case's figures and append them to the suite's results file."""
    line = figures.line(fault, **notes)
    print(f"\n{line}")
    path = Path(os.environ.get("TALLY_TEST_OUTPUT") or "/tmp") / "tally-faults.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")
    return line


# --- one test's stack --------------------------------------------------------


def create_database(pg, name="tally_faults"):
    """A database on the private server, migrated to head; return its URL."""
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    alembic_cfg = Config(str(ROOT / "alembic.ini"))
    alembic_cfg.set_main_option("sqlalchemy.url", pg.url(name))
    command.upgrade(alembic_cfg, "head")
    return pg.url(name)


class Stack:
    """The web app with its relay behind a live server, workers, and the checks."""

    def __init__(self, database_url, broker, simulator, log_dir, **options):
        self.engine = create_engine(database_url, pool_pre_ping=True)
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        broker.flush()
        self.settings = config.load(
            _env(database_url, broker.url, simulator.url, options.get("resend", 300))
            # Its own data folder: a spool file another test left must not drain here.
            | {"TALLY_DATA_DIR": str(log_dir / "data")}
        )
        self.celery = make_celery(self.settings)
        self.app = create_app(self.settings, celery=self.celery)
        self.relay = self.app.extensions["tally.relay"]
        self.handed, self.send_failures = [], []
        self.relay.send = _counting(self.relay.send, self.handed, self.send_failures)
        self.server = LiveServer(self.app)
        self.workers = Workers(
            self.settings,
            log_dir,
            pool=options.get("pool", "prefork"),
            concurrency=options.get("concurrency", 2),
            env=options.get("worker_env"),
        )

    @property
    def db(self):
        return self.app.extensions["tally.db"]

    def health(self):
        with urllib.request.urlopen(f"{self.server.url}/health", timeout=10) as reply:
            return json.load(reply)

    def saved(self):
        with self.engine.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM usage_records"))

    def settle(self, calls, timeout=120):
        """Wait until every record is saved and the outbox is empty; say whether."""
        try:
            wait_for(
                lambda: (
                    backlog(self.engine)[0] == 0
                    and count_saved(self.engine, calls) == len({c.key for c in calls})
                ),
                timeout=timeout,
                interval=0.5,
                message="every record saved and the outbox empty",
            )
        except AssertionError:
            return False
        return True

    def unsent(self, prefix):
        """Outbox entries of ids starting with ``prefix`` not yet handed over."""
        with self.engine.connect() as conn:
            return conn.scalar(
                text(
                    "SELECT count(*) FROM outbox"
                    " WHERE sent_at IS NULL AND message_id LIKE :pattern"
                ),
                {"pattern": prefix.replace("_", r"\_") + "%"},
            )

    def queued(self):
        """Tasks waiting in Redis, not yet taken by a worker."""
        client = redis.Redis.from_url(self.settings.broker_url)
        try:
            return client.llen(self.settings.queue)
        finally:
            client.close()

    def dead_letters(self):
        with self.engine.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM dead_letters"))

    def close(self):
        self.server.stop()
        self.workers.stop()
        self.celery.close()
        self.engine.dispose()


def _env(database_url, broker_url, simulator_url, resend):
    return {
        "TALLY_ENV": "test",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "TALLY_JWT_SECRET": JWT_SECRET,
        "TALLY_ANTHROPIC_BASE_URL": simulator_url,
        "TALLY_MODEL": "claude-sonnet-4-5",
        "TALLY_OUTBOX_RELAY_SECONDS": "1",
        "TALLY_OUTBOX_RESEND_SECONDS": str(resend),
        "TALLY_CHATS_PER_MINUTE": "0",
        "TALLY_QUEUE": f"tally.faults.{uuid.uuid4().hex[:8]}",
    }


def _counting(send, handed, failures):
    def send_and_count(records):
        started = time.monotonic()
        try:
            send(records)
        except Exception as exc:
            failures.append((exc, time.monotonic() - started))
            raise
        handed.append(len(records))

    return send_and_count


def in_thread(target, *args, **kwargs):
    """Run ``target`` in a thread; ``join()`` re-raises what it raised."""
    thread = _Thread(target, args, kwargs)
    thread.start()
    return thread


class _Thread(threading.Thread):
    def __init__(self, target, args, kwargs):
        super().__init__(daemon=True)
        self.call, self.error = (target, args, kwargs), None

    def run(self):
        target, args, kwargs = self.call
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # handed to the test's thread by join()
            self.error = exc

    def join(self, timeout=300):
        super().join(timeout)
        assert not self.is_alive(), f"{self.call[0].__name__} still running"
        if self.error is not None:
            raise self.error
