"""The WSGI entry point: ``gunicorn -k gevent wsgi:app``; also what ``flask`` loads.

Served by gunicorn's gevent worker (see README, Performance): every chat socket is
a greenlet. The worker has patched the standard library's sockets before this
module loads; psycopg2 talks to PostgreSQL in C, so it is made to wait through
gevent too, or one query would stall every socket of the process.
"""

import gc
import logging
import os
import threading

from app import create_app, stopping
from celery_app import celery

if os.environ.get("TALLY_LOG_LEVEL"):
    # gunicorn logs its own lines only; Tally's go to stderr at this level.
    logging.basicConfig(
        level=os.environ["TALLY_LOG_LEVEL"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cooperative_postgres():
    """Under gevent, let psycopg2 yield to other greenlets while it waits."""
    try:
        from gevent import monkey
    except ImportError:  # not installed: nothing is patched either
        return
    if monkey.is_module_patched("socket"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


_cooperative_postgres()
app = create_app(celery=celery)
# What is loaded by now lives as long as the process: keep it out of the cyclic
# collector's full passes. Without this a full pass took 160-190 ms under load on
# the benchmark machine, every socket's frames waiting behind it; with it, 13-15 ms.
gc.freeze()
relay = app.extensions.get("tally.relay")
if relay is not None and os.environ.get("FLASK_RUN_FROM_CLI") != "true":
    # Served, not a `flask …` command: send what waits in the outbox and the
    # spool from the start, not from the first request, which a server restarted
    # overnight may not see for hours.
    relay.start()
if threading.current_thread() is threading.main_thread():
    # gunicorn's worker has set its own handlers by now: ours run first.
    stopping.install(app)
