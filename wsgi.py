"""The WSGI entry point: ``gunicorn wsgi:app``; also what ``flask`` commands load."""

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

app = create_app(celery=celery)
# What is loaded by now lives as long as the process: keep it out of the cyclic
# collector's full passes. Without this a full pass took 160-190 ms under load on
# the benchmark machine, every socket's frames waiting behind it; with it, 13-15 ms.
gc.freeze()
if threading.current_thread() is threading.main_thread():
    # gunicorn's worker has set its own handlers by now: ours run first.
    stopping.install(app)
