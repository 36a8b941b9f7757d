"""Celery tasks. Names and payloads are a wire protocol: keep them stable.

``tally.save_usage(records)`` takes a list of usage records as plain JSON objects
(see ``app.usage.records``) and saves each exactly once.

A record ends in exactly one place: the ledger, or the dead letters when it can
never be saved as it is. Either way its outbox entry goes in the same
transaction, so the relay stops resending it.
"""

import json
import logging
import random

from celery import Task
from sqlalchemy import delete
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from app.db import unit_of_work
from app.models import DeadLetter, OutboxEntry
from app.usage.records import CallUsage, InvalidRecord
from celery_app import SAVE_USAGE, celery
from workers.db import session_factory
from workers.ledger import save_calls

log = logging.getLogger(__name__)

MAX_RETRIES = 8
BACKOFF_MAX = 60
# The database refuses these for the record itself: retrying cannot help.
REFUSED = (IntegrityError, DataError)


class SaveTask(Task):
    """Logs each retry at warning and keeps the payload when retries run out."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        log.warning(
            "task %s: saving %d records failed (attempt %d/%d): %s",
            task_id,
            len(_records(args, kwargs)),
            self.request.retries + 1,
            MAX_RETRIES + 1,
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
        # If the database is still away this raises, and the outbox, untouched,
        # sends the records again after its resend delay.
        with unit_of_work(_db()) as session:
            keep_dead_letters(session, records, repr(exc))


def _records(args, kwargs):
    records = kwargs.get("records") or (args[0] if args else [])
    return records if isinstance(records, list) else [records]


def _db():
    return session_factory(celery.conf.tally_settings)


def backoff(retries):
    """Seconds before retry number ``retries + 1``: exponential, half of it jitter.

    Full jitter (Celery's ``retry_jitter``) may draw nearly zero every time and
    spend all retries within seconds of an outage starting; keeping half of
    each delay fixed makes the retries outlast an outage of 90 s at least.
    """
    ceiling = min(BACKOFF_MAX, 2**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@celery.task(name=SAVE_USAGE, base=SaveTask, bind=True, max_retries=MAX_RETRIES)
def save_usage(self, records):
    try:
        return save_records(records)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None


def save_records(records):
    """Save the valid records, keep the others as dead letters; return the saved."""
    calls, invalid = parse_records(records)
    try:
        with unit_of_work(_db()) as session:
            keep_dead_letters(session, invalid, "invalid usage record")
            save_calls(session, calls)
    except REFUSED:
        # One record the database refuses must not keep the batch out: save
        # each alone, and only the refused ones become dead letters.
        with unit_of_work(_db()) as session:
            keep_dead_letters(session, invalid, "invalid usage record")
        return sum(_save_alone(call) for call in calls)
    return len(calls)


def _save_alone(call):
    try:
        with unit_of_work(_db()) as session:
            save_calls(session, [call])
    except REFUSED as exc:
        log.error(
            "usage record %s refused by the database: %s; kept as a dead letter, "
            "fix the cause and run `flask usage replay`",
            call.message_id,
            exc.orig,
        )
        with unit_of_work(_db()) as session:
            keep_dead_letters(session, [call.to_payload()], f"refused: {exc.orig}")
        return 0
    return 1


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


def keep_dead_letters(session, records, error):
    """Move ``records`` from the outbox to the dead letters, in ``session``."""
    if not records:
        return
    session.add_all(
        DeadLetter(payload=json.dumps(record), error=error[:2000]) for record in records
    )
    ids = [r["message_id"] for r in records if isinstance(r, dict)]
    ids = [i for i in ids if isinstance(i, str)]
    if ids:
        session.execute(delete(OutboxEntry).where(OutboxEntry.message_id.in_(ids)))
