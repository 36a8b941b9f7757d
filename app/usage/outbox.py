"""The outbox: usage records wait here, in the database, until the worker saved them.

The chat commits a record's outbox entry together with the turn it belongs to. The
relay hands entries to the broker in batches; the worker deletes an entry in the
same transaction that saves its record. An entry handed over but still here after
``resend_after`` seconds is sent again, which the ledger's unique key makes harmless.

A chat's entry is committed already marked as sent ("claimed") and handed to this
process's relay in memory, so that the relay needs no database round trip for it.
If the broker refuses it, the relay unmarks it and a sweep sends it again; if the
process dies first, it is sent again after ``resend_after`` like any other.
"""

import atexit
import collections
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, or_, select, update

from app.db import unit_of_work
from app.models import DeadLetter, OutboxEntry

log = logging.getLogger(__name__)


def add(session, call, *, claimed=False):
    """Write ``call``'s entry in the caller's transaction; return the entry's id.

    ``claimed``: the caller hands the entry to its relay with ``Relay.take`` once
    the transaction commits, so no sweep sends it in the meantime.
    """
    sent_at, attempts = (datetime.now(UTC), 1) if claimed else (None, 0)
    return session.execute(
        insert(OutboxEntry.__table__)
        .values(
            message_id=call.message_id,
            payload=json.dumps(call.to_payload()),
            sent_at=sent_at,
            attempts=attempts,
        )
        .returning(OutboxEntry.id)
    ).scalar_one()


def health(session, now=None):
    """Outbox depth, dead letters and the age of the oldest unsaved record."""
    now = now or datetime.now(UTC)
    depth, oldest = session.execute(
        select(func.count(OutboxEntry.id), func.min(OutboxEntry.created_at))
    ).one()
    dead = session.scalar(
        select(func.count(DeadLetter.id)).where(DeadLetter.replayed_at.is_(None))
    )
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (now - oldest).total_seconds() if oldest else 0.0
    return {"outbox_depth": depth, "dead_letters": dead, "oldest_unsaved_seconds": age}


class Relay:
    """Moves outbox entries to the broker from a background thread."""

    def __init__(
        self,
        session_factory,
        send,
        *,
        interval=5.0,
        resend_after=300.0,
        batch_size=500,
        spool=None,
        gather=0.02,
    ):
        self.session_factory = session_factory
        self.send = send
        self.interval = interval
        self.resend_after = timedelta(seconds=resend_after)
        self.batch_size = batch_size
        self.spool = spool
        self.gather = gather
        self._wake = threading.Event()
        self._sweep = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._handed = collections.deque()  # (entry id, payload), claimed entries

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="outbox-relay", daemon=True
            )
            self._thread.start()
            # A process stopping (gunicorn's worker after a stop signal) sends
            # what chats handed over in its last moments, instead of leaving it
            # to the five-minute resend.
            atexit.register(self.stop)

    def stop(self):
        """Stop the thread once it has sent what ``take`` was given."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            atexit.unregister(self.stop)

    def wake(self):
        """Sweep the outbox now: entries were written without ``take``."""
        self._sweep.set()
        self._wake.set()

    def take(self, entry_id, payload):
        """Send a committed, claimed entry (see ``add``) without reading it back."""
        self._handed.append((entry_id, payload))
        self._wake.set()

    def _run(self):
        swept_at = float("-inf")
        while not self._stop.is_set():
            woke = self._wake.wait(self.interval)
            if woke and self.gather:
                # Chats finishing together share one task.
                self._stop.wait(self.gather)
            self._wake.clear()
            self._guarded(self.send_handed)
            # Chats waking the relay all the time must not put the sweep off.
            if self._sweep.is_set() or time.monotonic() >= swept_at + self.interval:
                self._sweep.clear()
                swept_at = time.monotonic()
                self._guarded(self.sweep)
        self._guarded(self.send_handed)

    @staticmethod
    def _guarded(step):
        try:
            step()
        except Exception:
            # The relay must outlive a broken database or broker: the entries
            # stay in the outbox and a later tick sends them.
            log.exception("outbox relay: %s failed, will retry", step.__name__)

    def sweep(self):
        """The spool's records into the outbox, then every due entry to the broker."""
        if self.spool is not None:
            self.spool.drain(self.session_factory)
        while self.run_once() == self.batch_size:
            pass

    def send_handed(self):
        """Send the entries given to ``take``; return how many reached the broker."""
        sent = 0
        while self._handed:
            batch = []
            while self._handed and len(batch) < self.batch_size:
                batch.append(self._handed.popleft())
            try:
                self.send([payload for _, payload in batch])
            except Exception:
                self._release(batch)
                raise
            sent += len(batch)
            log.info("outbox relay: handed %d records to the broker", len(batch))
        return sent

    def _release(self, batch):
        """The broker refused ``batch``: unmark it so that a sweep sends it again."""
        self._sweep.set()
        try:
            with unit_of_work(self.session_factory) as session:
                session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id.in_([entry_id for entry_id, _ in batch]))
                    .values(sent_at=None)
                    .execution_options(synchronize_session=False)
                )
        except Exception as exc:
            # Database and broker both away: keep them here for the next tick.
            log.warning("outbox relay: cannot unmark unsent records: %s", exc)
            self._handed.extendleft(reversed(batch))

    def run_once(self, now=None):
        """Send one batch of due entries; return how many were handed over."""
        now = now or datetime.now(UTC)
        with unit_of_work(self.session_factory) as session:
            entries = session.execute(self._due(session, now)).all()
            if not entries:
                return 0
            self.send([json.loads(entry.payload) for entry in entries])
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_([entry.id for entry in entries]))
                .values(sent_at=now, attempts=OutboxEntry.attempts + 1)
                .execution_options(synchronize_session=False)
            )
        log.info("outbox relay: handed %d records to the broker", len(entries))
        return len(entries)

    def _due(self, session, now):
        due = (
            select(OutboxEntry.id, OutboxEntry.payload)
            .where(
                or_(
                    OutboxEntry.sent_at.is_(None),
                    OutboxEntry.sent_at < now - self.resend_after,
                )
            )
            .order_by(OutboxEntry.id)
            .limit(self.batch_size)
        )
        if session.get_bind().dialect.name == "postgresql":
            # Several web processes may relay at once: each takes other rows.
            due = due.with_for_update(skip_locked=True)
        return due
