"""Run the whole of Tally on one machine: the page, the worker and, without an API
key, the Claude simulator. ``scripts/run`` calls this after setting things up.
"""

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from alembic import command
from alembic.config import Config

from app import config

log = logging.getLogger("tally.runner")
ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    args = _parse(argv)
    settings = config.load()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    # After the migration: Alembic's own logging set-up would silence ours.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
    )
    env = dict(os.environ, TALLY_DATA_DIR=str(settings.data_dir))
    env.setdefault("TALLY_LOG_LEVEL", "INFO")  # the web app's usage lines show
    procs = []
    try:
        if settings.simulated and not settings.anthropic_base_url:
            url = _start_simulator(procs, env)
            env["TALLY_ANTHROPIC_BASE_URL"] = url
            settings = replace(settings, anthropic_base_url=url)
        _start(procs, "worker", _worker_command(settings, args.workers), env)
        if args.flower:
            _start(
                procs,
                "flower",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "celery_app",
                    "flower",
                    "--address=127.0.0.1",
                    "--port=5555",
                ],
                env,
            )
        web = web_command(
            args.host, args.port, args.connections, cooperative=cooperative(settings)
        )
        _start(procs, "web", web, env)
        _wait_until_serving(procs, args)
        _announce(args, settings)
        return _supervise(procs)
    finally:
        _stop_all(procs)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("TALLY_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TALLY_PORT", "5000"))
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="connections (open chat tabs included) the web process serves at "
        "once: 1000 by default, 64 on the SQLite default",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker concurrency")
    parser.add_argument(
        "--flower", action="store_true", help="also start Flower on :5555"
    )
    return parser.parse_args(argv)


def migrate(database_url):
    """Bring the database schema up to date (``alembic upgrade head``)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(cfg, "head")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_simulator(procs, env):
    port = _free_port()
    # A short pause between events lets the reply stream in as Claude's would.
    argv = [
        sys.executable,
        "-m",
        "app.simulator",
        "--port",
        str(port),
        "--delay-ms",
        "30",
    ]
    _start(procs, "simulator", argv, env)
    url = f"http://127.0.0.1:{port}"
    _wait_listening(port)
    return url


def _wait_listening(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the simulator did not start on port {port}")


def _worker_command(settings, concurrency):
    # SQLite takes one writer at a time: a single solo worker is enough there.
    sqlite = settings.database_url.startswith("sqlite")
    pool = (
        ["--pool", "solo"]
        if sqlite
        else ["--pool", "threads", "--concurrency", str(concurrency)]
    )
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--loglevel",
        "INFO",
        *pool,
    ]


def web_command(host, port, connections=None, *, cooperative=True):
    """How Tally's web app is served: gunicorn, one worker process.

    ``cooperative``: every store the app waits on yields to gevent (PostgreSQL
    through psycogreen, Redis through its sockets), so the worker is gevent's and
    each chat socket a greenlet (README, Performance). SQLite's waits would stop
    every socket of the process at once: with it, gunicorn's gthread worker.
    Every open chat tab holds one of ``connections`` for as long as it is open.
    """
    if cooperative:
        worker = ["gevent", "--worker-connections", str(connections or 1000)]
    else:
        worker = ["gthread", "--threads", str(connections or 64)]
    return [
        *(sys.executable, "-m", "gunicorn", "--worker-class", *worker),
        *("--workers", "1", "--bind", f"{host}:{port}", "--no-control-socket"),
        *("--access-logfile", "-", "wsgi:app"),
    ]


def cooperative(settings):
    """Whether neither the database nor the broker is a SQLite file."""
    return not any(
        url.startswith(("sqlite", "sqla+sqlite"))
        for url in (settings.database_url, settings.broker_url)
    )


def _start(procs, name, argv, env):
    log.info("starting %s: %s", name, " ".join(argv))
    # A process group of its own: stopping it stops its children too (gunicorn's
    # and Celery's workers), and a Ctrl-C reaches them only through us.
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    procs.append((name, proc))


def _wait_until_serving(procs, args, timeout=60):
    """Until the web app answers on its port, so the address shown works."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for _, proc in procs):
            return  # the supervisor reports which one stopped
        with contextlib.suppress(OSError):
            socket.create_connection((args.host, args.port), timeout=1).close()
            return
        time.sleep(0.2)


def _announce(args, settings):
    where = f"http://{args.host}:{args.port}"
    claude = (
        "simulated Claude (no ANTHROPIC_API_KEY)"
        if settings.simulated
        else "the Anthropic API"
    )
    log.info(
        "Tally is up at %s, talking to %s; database %s; Ctrl-C stops it",
        where,
        claude,
        settings.database_url,
    )


def _supervise(procs):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Explicitly: a shell that starts us in the background makes SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    log.error(
                        "%s exited with code %s; stopping Tally", name, proc.returncode
                    )
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


def _stop_all(procs):
    """Stop in reverse order of start, each before the next: the web app first,
    so that it cuts its replies while the simulator still answers and hands their
    records to the broker while the worker still runs."""
    for name, proc in reversed(procs):
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in 15 s: killing it", name)
        # Whatever is left in the group (a stuck worker) goes too.
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc, signum):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


if __name__ == "__main__":
    sys.exit(main())
