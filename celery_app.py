"""The Celery application: broker settings and the task protocol, no Flask app.

Run a worker with ``celery -A celery_app worker``; Flower with
``celery -A celery_app flower``.
"""

from celery import Celery

from app import config

SAVE_USAGE = "tally.save_usage"


def make_celery(settings=None):
    settings = settings or config.load()
    celery = Celery("tally", broker=settings.broker_url, include=["workers.tasks"])
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
        # Idempotent saves make redelivery safe, so a killed worker loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.broker_url),
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2},
        worker_hijack_root_logger=False,
    )
    celery.conf.tally_settings = settings
    return celery


def _transport_options(broker_url):
    if broker_url.startswith(("redis://", "rediss://")):
        # The sender keeps an outbox: a publish that fails fast is retried
        # later, a publish that hangs would hold up the relay.
        return {"socket_timeout": 5, "socket_connect_timeout": 5}
    return {}


celery = make_celery()
app = celery
