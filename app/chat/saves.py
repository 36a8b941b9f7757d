"""Which finished calls has the worker saved? One question per web process.

Every open chat socket used to ask the database on its own, twice a second, for
as long as one of its calls was unsaved: a crowd of sockets meant a crowd of
queries. Here one thread asks for all of this process's unsaved calls at once
and leaves each answer in its socket's inbox; the socket sends the frame itself,
so frames keep their order.
"""

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, tuple_

from app.db import unit_of_work
from app.models import SessionUsage, UsageRecord

log = logging.getLogger(__name__)

CHUNK = 1000  # message ids per query
IDLE_EXIT_SECONDS = 30


@dataclass(frozen=True)
class Saved:
    """A call the ledger holds now, and its session's totals at that moment."""

    message_id: str
    session_id: str
    cost: object
    session: SessionUsage | None


class SaveWatcher:
    """Looks up unsaved calls every ``interval`` seconds while there are any."""

    def __init__(self, session_factory, interval=0.2):
        self.session_factory = session_factory
        self.interval = interval
        self._waiting = {}  # message id -> (user id, inbox)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    def watch(self, message_id, user_id, inbox):
        """Put a ``Saved`` in ``inbox`` (anything with ``put``) once it is saved."""
        with self._lock:
            was_idle = not self._waiting
            self._waiting[message_id] = (user_id, inbox)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="save-watcher", daemon=True
                )
                self._thread.start()
        if was_idle:
            self._wake.set()

    def forget(self, message_ids):
        """The socket closed: nobody waits for these any more."""
        with self._lock:
            for message_id in message_ids:
                self._waiting.pop(message_id, None)

    def _run(self):
        while self._await_work():
            # One pace, however many calls finish: a call is saved some tens of
            # milliseconds after it ends, so the first look finds most.
            time.sleep(self.interval)
            try:
                self.check_once()
            except Exception as exc:  # the database is away: ask again later
                log.debug("save watcher: %s", exc)

    def _await_work(self):
        with self._lock:
            if self._waiting:
                return True
            self._wake.clear()
        if self._wake.wait(IDLE_EXIT_SECONDS):
            return True
        with self._lock:
            if self._waiting:
                return True
            self._thread = None  # restarted by the next watch()
            return False

    def check_once(self):
        """One look at the ledger for every waiting call; returns how many saved."""
        with self._lock:
            waiting = dict(self._waiting)
        found = []
        ids = list(waiting)
        with unit_of_work(self.session_factory) as session:
            for start in range(0, len(ids), CHUNK):
                found += self._saved(session, ids[start : start + CHUNK], waiting)
            totals = self._totals(session, found, waiting)
        with self._lock:
            for row in found:
                self._waiting.pop(row.message_id, None)
        for row in found:
            _, inbox = waiting[row.message_id]
            key = (row.session_id, waiting[row.message_id][0])
            inbox.put(Saved(row.message_id, row.session_id, row.cost, totals.get(key)))
        return len(found)

    @staticmethod
    def _saved(session, ids, waiting):
        rows = session.execute(
            select(
                UsageRecord.message_id,
                UsageRecord.user_id,
                UsageRecord.session_id,
                UsageRecord.cost,
            ).where(UsageRecord.message_id.in_(ids))
        )
        # A message id of another user's record is not this socket's call.
        return [row for row in rows if row.user_id == waiting[row.message_id][0]]

    @staticmethod
    def _totals(session, found, waiting):
        keys = {(row.session_id, waiting[row.message_id][0]) for row in found}
        if not keys:
            return {}
        rows = session.scalars(
            select(SessionUsage).where(
                tuple_(SessionUsage.session_id, SessionUsage.user_id).in_(list(keys))
            )
        )
        return {(row.session_id, row.user_id): row for row in rows}
