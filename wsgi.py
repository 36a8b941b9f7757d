"""The WSGI entry point: ``gunicorn wsgi:app``; also what ``flask`` commands load."""

import threading

from app import create_app, stopping
from celery_app import celery

app = create_app(celery=celery)
if threading.current_thread() is threading.main_thread():
    # gunicorn's worker has set its own handlers by now: ours run first.
    stopping.install(app)
