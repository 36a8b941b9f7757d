"""A file of last resort for usage records the database would not take.

When the outbox insert fails (the database is down as a chat ends), the record is
appended here, fsynced, and moved into the outbox once the database is back.
"""

import fcntl
import json
import logging
import os
from pathlib import Path

from app.db import unit_of_work
from app.usage import outbox
from app.usage.records import CallUsage

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory):
        self.directory = Path(directory)

    @property
    def path(self):
        return self.directory / f"spool-{os.getpid()}.jsonl"

    def append(self, call):
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(call.to_payload()) + "\n"
        with open(self.path, "a", encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)
            spool.write(line)
            spool.flush()
            os.fsync(spool.fileno())
        log.warning(
            "usage %s spooled to %s: the database refused it",
            call.message_id,
            self.path,
        )

    def depth(self):
        return sum(_count_lines(p) for p in self.directory.glob("spool-*.jsonl"))

    def drain(self, session_factory):
        """Move every spooled record into the outbox; return how many moved."""
        moved = 0
        for path in sorted(self.directory.glob("spool-*.jsonl")):
            moved += self._drain_file(path, session_factory)
        return moved

    def _drain_file(self, path, session_factory):
        with open(path, "r+", encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)
            calls = [
                CallUsage.from_payload(json.loads(line))
                for line in spool
                if line.strip()
            ]
            if calls:
                with unit_of_work(session_factory) as session:
                    for call in calls:
                        outbox.add(session, call)
            spool.truncate(0)
        if calls:
            log.info(
                "moved %d spooled usage records from %s to the outbox", len(calls), path
            )
        return len(calls)


def _count_lines(path):
    with open(path, encoding="utf-8") as spool:
        return sum(1 for line in spool if line.strip())
