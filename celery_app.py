"""The Celery application: broker settings and the task protocol, no Flask app.

Run a worker with ``celery -A celery_app worker``; Flower with
``celery -A celery_app flower``.
"""

import os

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
        # Task events let Flower show each save, its retries and failures.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    celery.conf.tally_settings = settings
    return celery


def _transport_options(broker_url):
    if broker_url.startswith(("redis://", "rediss://")):
        # The sender keeps an outbox: a publish that fails fast is retried
        # later, a publish that hangs would hold up the relay.
        options = {"socket_timeout": 5, "socket_connect_timeout": 5}
        return options | _visibility_options(os.environ)
    return {}


def _visibility_options(env):
    """``TALLY_VISIBILITY_TIMEOUT``: seconds before Redis redelivers an unacked task."""
    raw = env.get("TALLY_VISIBILITY_TIMEOUT")
    if not raw:
        return {}
    if not raw.isdigit() or int(raw) < 1:
        raise config.ConfigError(
            f"TALLY_VISIBILITY_TIMEOUT must be a whole number of seconds, not {raw!r}"
        )
    timeout = int(raw)
    # Redis redelivers only when a worker sweeps for expired messages; the
    # default sweep (every 100 s) would make a short timeout pointless.
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1, timeout // 2),
        "unacked_restore_throttle": 1,
    }


def _closed_broker_is_a_connection_error():
    """Keep a worker alive when Redis goes away with tasks unacknowledged.

    kombu 5.7.0: after a lost connection the consumer collects it, which lets
    go of the transport's connection details, then closes it; that close tries
    to give unacknowledged messages back, asks for the details it no longer
    has, and the AttributeError ends the worker ("Unrecoverable error").
    Raised as a connection error, kombu ignores it and reconnects; Redis hands
    the messages out again after the visibility timeout.
    """
    from kombu.transport import redis as redis_transport
    from redis.exceptions import ConnectionError as RedisConnectionError

    connparams = redis_transport.Channel._connparams
    if getattr(connparams, "tally_guard", False):
        return

    def guarded(self, asynchronous=False):
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is already closed")
        return connparams(self, asynchronous=asynchronous)

    guarded.tally_guard = True
    redis_transport.Channel._connparams = guarded


_closed_broker_is_a_connection_error()
celery = make_celery()
app = celery
