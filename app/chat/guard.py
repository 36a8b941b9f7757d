"""Are the open sockets' tokens still good? One look per web process.

A chat socket stays open for hours. Its token was verified when it came; what
can change since is that it is revoked (signed out elsewhere) or its account is
disabled. Every socket used to ask on its own every few seconds, which for a
thousand idle tabs was two hundred queries a second. Here one thread asks for all
of them at once: which of these accounts are gone or disabled, and which of these
tokens revoked. A socket it finds signed out is marked; the socket closes itself
at its next wake-up. Every chat still checks its own token before Claude is
called, so a mark that comes a few seconds late never lets a paid call through.
"""

import logging
import threading
import time
import weakref

from sqlalchemy import select

from app.auth.tokens import revocation_keys
from app.db import unit_of_work
from app.models import RevokedToken, User

log = logging.getLogger(__name__)

CHUNK = 1000  # ids or keys per query
REVOKED = "this token was revoked: sign in again"
GONE = "this account does not exist or is disabled"


class TokenGuard:
    """Every ``interval`` seconds, marks the watched sockets whose token went bad.

    A watched socket has ``user_id``, ``claims`` and ``token`` attributes and
    gets ``signed_out = (token, reason)`` when that token may no longer be used.
    """

    def __init__(self, session_factory, interval=5.0):
        self.session_factory = session_factory
        self.interval = interval
        self._sockets = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread = None

    def watch(self, socket):
        with self._lock:
            self._sockets.add(socket)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="token-guard", daemon=True
                )
                self._thread.start()

    def forget(self, socket):
        with self._lock:
            self._sockets.discard(socket)

    def _run(self):
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self._sockets:
                    self._thread = None  # started again by the next watch()
                    return
            try:
                self.check_once()
            except Exception as exc:  # the database is away: look again later
                log.debug("token guard: %s", exc)

    def check_once(self):
        """One look for every watched socket; returns how many it marked."""
        with self._lock:
            held = [(s, s.user_id, s.claims, s.token) for s in self._sockets]
        held = [h for h in held if h[3] is not None]
        keys = [revocation_keys(claims, token) for _, _, claims, token in held]
        with unit_of_work(self.session_factory) as session:
            active = _active_users(session, {user_id for _, user_id, _, _ in held})
            revoked = _revoked(session, {key for ks in keys for key in ks})
        marked = 0
        for (socket, user_id, _, token), its_keys in zip(held, keys, strict=True):
            if user_id not in active:
                socket.signed_out = (token, GONE)
            elif revoked.intersection(its_keys):
                socket.signed_out = (token, REVOKED)
            else:
                continue
            marked += 1
        return marked


def _chunks(values):
    values = list(values)
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _active_users(session, user_ids):
    found = set()
    for chunk in _chunks(user_ids):
        found.update(
            session.scalars(
                select(User.id).where(User.id.in_(chunk), User.disabled.is_(False))
            )
        )
    return found


def _revoked(session, keys):
    found = set()
    for chunk in _chunks(keys):
        found.update(
            session.scalars(select(RevokedToken.jti).where(RevokedToken.jti.in_(chunk)))
        )
    return found
