"""Celery tasks. Names and payloads are a wire protocol: keep them stable.

``tally.save_usage(records)`` takes a list of usage records as plain JSON objects
(see ``app.usage.records``) and saves each exactly once.
"""

import json
import logging

from celery import Task
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from app.db import unit_of_work
from app.models import DeadLetter
from app.usage.records import CallUsage, InvalidRecord
from celery_app import SAVE_USAGE, celery
from workers.db import session_factory
from workers.ledger import save_calls

log = logging.getLogger(__name__)

MAX_RETRIES = 8


class SaveTask(Task):
    """Logs each retry at warning and keeps the payload when retries run out."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        log.warning(
            "task %s: saving %d records failed (attempt %d/%d): %s",
            task_id,
            len(_records(args, kwargs)),
            self.request.retries + 1,
            MAX_RETRIES,
            exc,
        )

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        records = _records(args, kwargs)
        log.error(
            "task %s: giving up on %d records after %d attempts: %s; "
            "they are kept as dead letters, run `flask usage replay`",
            task_id,
            len(records),
            self.request.retries + 1,
            exc,
        )
        keep_dead_letters(records, repr(exc))


def _records(args, kwargs):
    return kwargs.get("records") or (args[0] if args else [])


@celery.task(
    name=SAVE_USAGE,
    base=SaveTask,
    autoretry_for=(OperationalError,),
    dont_autoretry_for=(IntegrityError,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def save_usage(records):
    calls, invalid = parse_records(records)
    if invalid:
        keep_dead_letters(invalid, "invalid usage record")
    if calls:
        with unit_of_work(session_factory(celery.conf.tally_settings)) as session:
            save_calls(session, calls)
    return len(calls)


def parse_records(records):
    """Split payloads into valid ``CallUsage`` records and the invalid payloads."""
    calls, invalid = [], []
    for payload in records if isinstance(records, list) else [records]:
        try:
            calls.append(CallUsage.from_payload(payload))
        except InvalidRecord as exc:
            log.error("usage record %r refused: %s", _describe(payload), exc)
            invalid.append(payload)
    return calls, invalid


def _describe(payload):
    return payload.get("message_id") if isinstance(payload, dict) else type(payload)


def keep_dead_letters(records, error):
    try:
        with unit_of_work(session_factory(celery.conf.tally_settings)) as session:
            session.add_all(
                DeadLetter(payload=json.dumps(record), error=error[:2000])
                for record in records
            )
    except DBAPIError:
        # The database is unreachable even for the dead letter: re-raise so that
        # the message is not acknowledged and comes back once it is reachable.
        log.exception("could not keep %d dead letters", len(records))
        raise
