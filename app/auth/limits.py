"""Whether a user may start a chat now (budget left, chats per minute), and
whether a password may be tried now (failed sign-ins).

The counts live in this process (sliding windows): with several web processes
each counts on its own, so the effective limits are the settings times the
number of processes.
"""

import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime

from flask import current_app

from app.auth.budgets import budget_status, has_budget, over_budget_message

WINDOW_SECONDS = 60.0


class ChatRateLimiter:
    """At most ``per_minute`` chats per user in any 60 seconds (0: no limit)."""

    def __init__(self, per_minute, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._starts = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, user_id):
        """Count a chat for ``user_id`` and say True, or say False and count none."""
        if not self.per_minute:
            return True
        with self._lock:
            now = self.clock()
            starts = self._forget_old(user_id, now)
            if len(starts) >= self.per_minute:
                return False
            starts.append(now)
            return True

    def retry_after(self, user_id):
        """Seconds until ``user_id`` may chat again (0 when it may now)."""
        with self._lock:
            now = self.clock()
            starts = self._forget_old(user_id, now)
            if not self.per_minute or len(starts) < self.per_minute:
                return 0.0
            return starts[0] + WINDOW_SECONDS - now

    def _forget_old(self, user_id, now):
        starts = self._starts[user_id]
        while starts and starts[0] <= now - WINDOW_SECONDS:
            starts.popleft()
        return starts


class SignInThrottle:
    """After ``per_name`` failed sign-ins for one username, or ``per_address``
    from one address, within ``window`` seconds, refuse more tries for a while.

    A success clears the username's failures, not the address's.
    """

    def __init__(self, per_name=5, per_address=50, window=900.0, clock=time.monotonic):
        self.limits = {"name": per_name, "address": per_address}
        self.window = window
        self.clock = clock
        self._failures = defaultdict(deque)
        self._lock = threading.Lock()

    def wait(self, username, address):
        """Seconds before a try for ``username`` from ``address`` is heard; 0: now."""
        with self._lock:
            now = self.clock()
            waits = [
                self._wait(key, limit, now)
                for key, limit in self._keys(username, address)
            ]
        return max(waits)

    def failed(self, username, address):
        with self._lock:
            now = self.clock()
            for key, _ in self._keys(username, address):
                self._failures[key].append(now)

    def succeeded(self, username):
        with self._lock:
            self._failures.pop(("name", username.lower()), None)

    def _keys(self, username, address):
        return [
            (("name", username.lower()), self.limits["name"]),
            (("address", address or "-"), self.limits["address"]),
        ]

    def _wait(self, key, limit, now):
        failures = self._failures.get(key)
        if not failures:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < limit:
            return 0.0
        return failures[-limit] + self.window - now


def limiter():
    return current_app.extensions["tally.chat_limiter"]


def allow_chat(user_id):
    """True when ``user_id`` is under the chats-per-minute limit; counts the chat."""
    return limiter().allow(user_id)


def chat_refusal(session, user_id, now=None):
    """``(code, message)`` when a chat may not start now, else None (and counted).

    Codes: ``over_budget`` (no money left today or this month) and
    ``rate_limited`` (too many chats in the last minute).
    """
    if has_budget(session, user_id):
        status = budget_status(session, user_id, now or datetime.now(UTC))
        if status["over"]:
            return "over_budget", over_budget_message(status)
    if not allow_chat(user_id):
        wait = max(1, round(limiter().retry_after(user_id)))
        per_minute = limiter().per_minute
        return "rate_limited", f"at most {per_minute} chats a minute: wait {wait} s"
    return None


def chat_limits(settings):
    """The limits a client should know before it sends a chat."""
    return {
        "max_message_bytes": settings.max_message_bytes,
        "chats_per_minute": settings.chats_per_minute,
    }
