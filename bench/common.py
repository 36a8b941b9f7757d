"""What every benchmark shares: figures, the results table, a scratch database,
and the processes a benchmark starts (simulator, web server, Celery worker).
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from app import config
from app.runner import web_command

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get(
    "TALLY_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432"
)
REDIS_URL = os.environ.get("TALLY_BENCH_REDIS", "redis://127.0.0.1:6379/10")
JWT_SECRET = "bench-secret-" + "b" * 40
TABLES = (
    "usage_records",
    "session_usage",
    "daily_usage",
    "outbox",
    "dead_letters",
    "chat_turns",
    "chat_sessions",
    "users",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A benchmark could not measure what it claims: a wrong count, a dead process."""


def log(message, *args):
    """Progress on stderr, so that stdout holds only the table."""
    print(message % args if args else message, file=sys.stderr, flush=True)


def wait_for(condition, timeout=30.0, interval=0.02, message="condition"):
    """Poll ``condition`` until it returns a truthy value; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {message}")


# --- figures and the table ---------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """``ratio >= 0.5`` or ``value < 100``: what a figure must reach."""

    on: str  # "ratio" or "value"
    op: str  # ">=" or "<="
    limit: float

    def met(self, figure):
        got = figure.ratio if self.on == "ratio" else figure.median
        if got is None:
            return None
        return got >= self.limit if self.op == ">=" else got <= self.limit

    def __str__(self):
        return f"{self.on} {self.op} {self.limit:g}"


@dataclass
class Figure:
    """One measured figure, its runs, and its baseline's runs from the same run."""

    bench: str
    name: str
    unit: str
    samples: list
    baseline: str = ""
    baseline_samples: list = field(default_factory=list)
    goal: Goal | None = None
    note: str = ""

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples else None

    @property
    def baseline_median(self):
        samples = self.baseline_samples
        return statistics.median(samples) if samples else None

    @property
    def ratio(self):
        base = self.baseline_median
        if self.median is None or not base:
            return None
        return self.median / base


def _num(value):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _spread(samples):
    if not samples:
        return "-"
    return f"{_num(statistics.median(samples))} ({_num(min(samples))}-" + (
        f"{_num(max(samples))})"
    )


def _verdict(figure):
    if figure.goal is None:
        return ""
    met = figure.goal.met(figure)
    mark = "-" if met is None else ("met" if met else "MISSED")
    return f"{figure.goal}: {mark}"


HEADER = (
    "benchmark",
    "figure",
    "median (min-max)",
    "unit",
    "baseline",
    "baseline median (min-max)",
    "ratio",
    "goal",
)


def table_rows(figures):
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        name = f"{f.name} [{f.note}]" if f.note else f.name
        yield (
            f.bench,
            name,
            _spread(f.samples),
            f.unit,
            f.baseline or "-",
            _spread(f.baseline_samples),
            ratio,
            _verdict(f),
        )


def markdown_table(figures):
    """The results as a GitHub markdown table; it reads as plain text too."""
    rows = [HEADER, *table_rows(figures)]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


# --- processes ---------------------------------------------------------------


def cpu_seconds(pid):
    """User plus system CPU time of a whole process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid):
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A subprocess whose output goes to a log file, stopped on ``stop()``."""

    def __init__(self, name, args, env, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (kept for the process)
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.url = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited: {self.tail()}")
        return True

    def output(self):
        return self.log_path.read_text(errors="replace")

    def tail(self, size=3000):
        return self.output()[-size:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def post_json(url, body):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def login(base_url, username):
    """A development-login access token for ``username``."""
    return post_json(f"{base_url}/api/auth/dev-login", {"username": username})[
        "access_token"
    ]


# --- the scratch environment -------------------------------------------------


class Scratch:
    """A scratch database and queue of their own, dropped when the block ends."""

    def __init__(self, log_dir=None):
        suffix = uuid.uuid4().hex[:8]
        self.db_name = f"tally_bench_{suffix}"
        self.url = f"{PG_ADMIN}/{self.db_name}"
        self.broker_url = REDIS_URL
        self.queue = f"tally.bench.{suffix}"
        self.log_dir = Path(log_dir or RESULTS / "logs" / suffix)
        self.services = []
        self.engine = None

    def __enter__(self):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._admin(f'CREATE DATABASE "{self.db_name}"')
        alembic_cfg = Config(str(ROOT / "alembic.ini"))
        alembic_cfg.set_main_option("sqlalchemy.url", self.url)
        command.upgrade(alembic_cfg, "head")
        self.engine = create_engine(self.url)
        return self

    def __exit__(self, *exc):
        for service in reversed(self.services):
            service.stop()
        self.engine.dispose()
        self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        client = redis.Redis.from_url(self.broker_url)
        client.delete(self.queue)
        client.close()

    def _admin(self, sql):
        admin = create_engine(f"{PG_ADMIN}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(sql))
        admin.dispose()

    def env(self, **extra):
        """The environment Tally's processes read their settings from."""
        env = dict(os.environ)
        paths = [str(ROOT), env.get("PYTHONPATH", "")]
        env.update(
            TALLY_ENV="development",
            DATABASE_URL=self.url,
            CELERY_BROKER_URL=self.broker_url,
            TALLY_QUEUE=self.queue,
            TALLY_JWT_SECRET=JWT_SECRET,
            TALLY_OUTBOX_RELAY_SECONDS="1",
            # The crowd sends far more chats per user than the product allows.
            TALLY_CHATS_PER_MINUTE="0",
            TALLY_DATA_DIR=str(self.log_dir / "data"),
            PYTHONPATH=os.pathsep.join(p for p in paths if p),
        )
        env.update(extra)
        return env

    def settings(self, **extra):
        return config.load(self.env(**extra))

    def truncate(self):
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))

    def start(self, name, args, env=None):
        service = Service(name, args, env or self.env(), self.log_dir)
        self.services.append(service)
        return service

    def stop(self, service):
        service.stop()
        self.services.remove(service)

    def simulator(self):
        """The Messages API simulator in a process of its own, stamping events."""
        port = free_port()
        args = [sys.executable, "-m", "bench.simulator", "--port", str(port)]
        sim = self.start("simulator", args)
        sim.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: sim.alive() and http_ok(f"{sim.url}/health"), 30, 0.05, "sim")
        return sim

    def worker(self, pool="solo", concurrency=1):
        """A Celery worker on the scratch queue, started and ready to consume."""
        args = [
            *(sys.executable, "-m", "bench.worker", "--pool", pool),
            *("--concurrency", str(concurrency)),
        ]
        worker = self.start(f"worker-{pool}{concurrency}", args)
        wait_for(
            lambda: worker.alive() and READY in worker.output(), 60, 0.05, "worker"
        )
        return worker


READY = "bench: worker ready"


# --- Tally's web process -----------------------------------------------------

SETUPS = ("werkzeug", "gthread", "gevent")


def _served_setup():
    """The gunicorn worker class Tally ships with (scripts/run, image, compose)."""
    argv = web_command("127.0.0.1", 0)
    return argv[argv.index("--worker-class") + 1]


SERVED = _served_setup()


def web_args(setup, port, workers=1, threads=1000):
    """The command that serves Tally under ``setup`` on ``port``."""
    if setup == "werkzeug":
        return [sys.executable, "-m", "bench.webserver", "--port", str(port)]
    gunicorn = [
        *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
        *("--workers", str(workers), "--backlog", "2048", "--log-level", "warning"),
        "--no-control-socket",
    ]
    if setup == "gthread":
        return [*gunicorn, "-k", "gthread", "--threads", str(threads), "wsgi:app"]
    if setup == "gevent":
        return [*gunicorn, "-k", "gevent", "--worker-connections", "4000", "wsgi:app"]
    raise ValueError(f"unknown server setup {setup!r}")


class WebServer:
    """Tally's web app in its own process(es), serving on a loopback port."""

    def __init__(self, scratch, setup, sim_url, broker_url=None, workers=1):
        port = free_port()
        extra = {"TALLY_ANTHROPIC_BASE_URL": sim_url}
        if broker_url:
            extra["CELERY_BROKER_URL"] = broker_url
        self.setup = setup
        self.service = scratch.start(
            f"web-{setup}", web_args(setup, port, workers), scratch.env(**extra)
        )
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws/chat"
        self.workers = workers
        wait_for(self._up, 60, 0.1, f"web server ({setup})")

    def _up(self):
        self.service.alive()
        if not http_ok(f"{self.url}/health"):
            return False
        return self.service_pids() if self.setup != "werkzeug" else True

    def service_pids(self):
        """The processes that serve requests: gunicorn's workers, not its master."""
        if self.setup == "werkzeug":
            return [self.service.pid]
        found = children(self.service.pid)
        return found if len(found) == self.workers else []

    def cpu_seconds(self):
        return sum(cpu_seconds(pid) for pid in self.service_pids())

    def rss_bytes(self):
        return sum(rss_bytes(pid) for pid in self.service_pids())
