"""The chat page and its websocket."""

import json
import logging
import queue
import time
from datetime import UTC, datetime
from decimal import Decimal

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from app.auth.budgets import budget_left, has_limit, money_text
from app.auth.identity import (
    NotAuthenticated,
    still_valid,
    token_expires_at,
    verify,
)
from app.auth.limits import chat_limits, chat_refusal
from app.chat import history
from app.chat.frames import FrameSender
from app.chat.stream import ClientGone, ServerStopping, run_call
from app.db import unit_of_work
from app.extensions import sock
from app.models import DeadLetter, SessionUsage, UsageRecord
from app.usage import outbox
from app.usage.pricing import context_window
from app.usage.rates import shared_rates

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)

AUTH_TIMEOUT = 10
IDLE_POLL = 0.5  # while a call of this socket waits to be saved
IDLE_WAIT = 2.0  # otherwise: how soon a signed-out or stopping socket closes
DEAD_LETTER_CHECK_SECONDS = 5
CLOSE_UNAUTHORIZED = 4401
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
DATABASE_AWAY = "the database is unavailable: no call was made, try again in a moment"


@bp.get("/")
def page():
    settings = current_app.extensions["tally.settings"]
    return render_template(
        "chat.html",
        simulated=settings.simulated,
        model=settings.model,
        dev_login=settings.development,
    )


@sock.route("/ws/chat", bp=bp)
def chat_socket(ws):
    ChatConnection(ws, current_app, request.headers.get("Authorization")).serve()


class ChatRefused(Exception):
    """The user may not chat now; the arguments are the error frame's code and text."""


def money(value):
    """Exact dollars as the page shows them: no float, no trailing zeros."""
    return None if value is None else format(Decimal(value).normalize(), "f")


class ChatConnection:
    """One browser tab: authenticate, then one Claude call per chat frame."""

    def __init__(self, ws, app, authorization=None):
        self.ws = ws
        self.settings = app.extensions["tally.settings"]
        flusher = app.extensions["tally.flusher"]
        self.frames = FrameSender(ws, flusher.interval, flusher)
        self.db = app.extensions["tally.db"]
        self.client = app.extensions["tally.claude"]
        self.relay = app.extensions.get("tally.relay")
        self.watcher = app.extensions["tally.saves"]
        self.guard = app.extensions["tally.guard"]
        self.signed_out = None  # (token, why), set by the guard's thread
        self.stopping = app.extensions["tally.stopping"]
        self.inbox = queue.SimpleQueue()  # Saved calls, from the watcher's thread
        self.budgeted = False  # the user has a daily or monthly limit
        self.spool = app.extensions["tally.spool"]
        self.authorization = authorization
        self.user_id = None
        self.known = None  # history.Known: the session this socket chatted in last
        self.token = None
        self.claims = None
        self.expires_at = None
        self.pending = {}  # message id -> (session id, cost) until the worker saved it
        self.dead = set()  # pending calls already reported as dead letters
        self.dead_checked_at = time.monotonic()

    def send(self, kind, **fields):
        self.frames.send(kind, **fields)

    def error(self, code, message):
        self.send("error", code=code, message=message)

    def serve(self):
        if not self.authenticate(self._header_token() or self._first_frame_token()):
            return
        self.send(
            "ready",
            user={"id": self.user_id, "username": self.username},
            model=self.settings.model,
            context_window=context_window(self.settings.model),
            simulated=self.settings.simulated,
            budget=self._budget_if_known(),
            limits=chat_limits(self.settings),
        )
        self.guard.watch(self)
        try:
            while not self.stopping.is_set() and self.still_signed_in():
                raw = self.ws.receive(timeout=IDLE_POLL if self.pending else IDLE_WAIT)
                if raw is None:
                    self.report_saves()
                else:
                    self.handle(raw)
        finally:
            self.guard.forget(self)
            self.watcher.forget(list(self.pending))
        if self.stopping.is_set() and self.ws.connected:
            self.ws.close(CLOSE_GOING_AWAY, "Tally is restarting")

    def authenticate(self, token, *, same_user=False):
        """Check ``token``; on failure tell the client and close the socket.

        With the database away, a socket never signed in is closed (try again);
        one signed in stays open, its token checked again before the next call.
        """
        try:
            with unit_of_work(self.db) as session:
                self._verify(session, token, same_user=same_user)
        except NotAuthenticated as exc:
            return self._refuse(exc)
        except DBAPIError as exc:
            log.warning("chat socket: cannot check a token: %s", exc)
            self.error("database_unavailable", DATABASE_AWAY)
            if self.user_id is None:  # never signed in: nothing to keep open
                self.ws.close(CLOSE_TRY_AGAIN, "database unavailable")
                return False
            return True
        return True

    def _verify(self, session, token, *, same_user):
        """Check ``token`` inside a transaction the caller has open."""
        claims, user = verify(session, token)
        if same_user and user.id != self.user_id:
            raise NotAuthenticated("a token for another user")
        self.user_id, self.username = user.id, user.username
        self.budgeted = has_limit(user)
        self.token, self.claims = token, claims
        self.expires_at = token_expires_at(token)

    def _still_valid(self, session, *also):
        """The socket's token may still start a call: not expired nor revoked.

        Returns the user, then the values of ``also`` (see ``still_valid``).
        """
        if self.expires_at is not None and datetime.now(UTC) >= self.expires_at:
            raise NotAuthenticated("the token has expired: sign in again")
        found = still_valid(session, self.user_id, self.claims, self.token, *also)
        self.budgeted = has_limit(found[0])
        return found

    def _refuse(self, exc):
        log.info("chat socket refused: %s", exc)
        self.error("unauthorized", str(exc))
        self.ws.close(CLOSE_UNAUTHORIZED, "unauthorized")
        return False

    def still_signed_in(self):
        """Close the socket once the token expires or is revoked mid-chat."""
        if self.expires_at is not None and datetime.now(UTC) >= self.expires_at:
            self.error("unauthorized", "the token has expired: sign in again")
            self.ws.close(CLOSE_UNAUTHORIZED, "token expired")
            return False
        # The guard looks at every socket's token at once (app/chat/guard.py).
        signed_out = self.signed_out
        if signed_out is not None and signed_out[0] == self.token:
            return self._refuse(NotAuthenticated(signed_out[1]))
        return True

    def _header_token(self):
        scheme, _, token = (self.authorization or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _first_frame_token(self):
        frame = _parse(self.ws.receive(timeout=AUTH_TIMEOUT))
        if isinstance(frame, dict) and frame.get("type") == "auth":
            return _text(frame.get("token"))
        return None

    def handle(self, raw):
        frame = _parse(raw)
        if not isinstance(frame, dict):
            self.error("bad_frame", 'frames are JSON objects with a "type"')
        elif frame.get("type") == "chat":
            self.chat(frame)
        elif frame.get("type") == "auth":
            # A refreshed token for the same user keeps the socket open.
            self.authenticate(_text(frame.get("token")), same_user=True)
        else:
            self.error("bad_frame", f"unknown frame type {frame.get('type')!r}")

    def chat(self, frame):
        text, session_id = frame.get("text"), frame.get("session_id")
        if session_id is not None and _text(session_id) is None:
            return self.error("not_found", "no such session")
        if not isinstance(text, str) or not text.strip():
            return self.error("bad_frame", 'a chat frame needs a non-empty "text"')
        try:
            size = len(text.encode())
        except UnicodeEncodeError:  # "\ud800" is valid JSON, not valid text
            return self.error("bad_frame", "the text is not valid Unicode")
        limit = self.settings.max_message_bytes
        if size > limit:
            return self.error(
                "too_large", f"the message is {size:,} bytes; the limit is {limit:,}"
            )
        try:
            known = self._open(session_id)
        except NotAuthenticated as exc:
            return self._refuse(exc)
        except history.SessionNotFound:
            return self.error("not_found", "no such session")
        except ChatRefused as refusal:
            return self.error(*refusal.args)
        except DBAPIError as exc:
            log.warning("chat socket: cannot open the session: %s", exc)
            return self.error("database_unavailable", DATABASE_AWAY)
        result = run_call(
            self.client,
            model=self.settings.model,
            max_tokens=self.settings.max_tokens,
            messages=[*known.messages, {"role": "user", "content": text}],
            on_event=self._relay_event(known.session_id),
        )
        self.finish(known, text, result)

    def _open(self, session_id):
        """The session's ``history.Known``, unless signed out, over budget or rate.

        The session this socket chatted in last is read again only if another tab
        added turns to it since (see ``history.Known``): one query in all.
        """
        known = self.known
        if known is None or known.session_id != session_id:
            known = None
        with unit_of_work(self.db) as session:
            # A token revoked since the last check must not start a paid call.
            # Held for the block: the session keeps loaded rows only while they
            # are referenced, and the budget check reads this one again.
            also = () if known is None else history.turns_mark(session_id)
            user, *mark = self._still_valid(session, *also)
            refusal = chat_refusal(session, user.id)
            if refusal is not None:
                raise ChatRefused(*refusal)
            if known is not None and mark == known.mark:
                return known
            return history.open_session(
                session, self.user_id, session_id, self.settings.model
            )

    def _relay_event(self, chat_session_id):
        window = {}

        def on_event(kind, meter, text):
            if not self.ws.connected:
                raise ClientGone
            if self.stopping.is_set():
                raise ServerStopping
            if kind == "start":
                window["size"] = context_window(meter.model)
                self.send(
                    "start",
                    session_id=chat_session_id,
                    message_id=meter.message_id,
                    model=meter.model,
                )
            if kind in ("start", "usage"):
                self.send(
                    "token_update",
                    message_id=meter.message_id,
                    **meter.snapshot(window["size"]),
                )
            elif kind in ("text", "thinking"):
                self.frames.text(kind, text)

        return on_event

    def finish(self, known, text, result):
        chat_session_id = known.session_id
        if not result.billed:
            return self.error(result.error_code or "upstream", result.error)
        # A chat call is keyed by its message id alone; the request id is logged.
        call = result.meter.to_call(user_id=self.user_id, session_id=chat_session_id)
        # The worker prices with the same cache: the end frame shows what is saved.
        cost = shared_rates().price(call).cost
        self.pending[call.message_id] = (chat_session_id, cost)
        session_cost = self._keep(call, known, text, result)
        if result.error_code != "client_gone":
            self.watcher.watch(call.message_id, self.user_id, self.inbox)
        log.info(
            "usage %s (request %s) for session %s: %d in / %d out%s",
            call.message_id,
            result.request_id or "-",
            chat_session_id,
            call.input_tokens,
            call.output_tokens,
            " (partial)" if call.partial else "",
        )
        if result.error_code == "client_gone":
            return
        if result.error is not None:
            self.error(result.error_code, result.error)
        self.send(
            "end",
            message_id=call.message_id,
            stop_reason=result.meter.stop_reason,
            usage=result.meter.snapshot(context_window(call.model)),
            cost=money(cost),
            session_cost=money(session_cost),
            partial=call.partial,
            saved=False,
        )

    def _budget(self):
        with unit_of_work(self.db) as session:
            return self._budget_in(session)

    def _budget_in(self, session):
        """What is left of the user's budgets, as exact dollar strings."""
        if not self.budgeted:
            return {"daily_left": None, "monthly_left": None}
        left = budget_left(session, self.user_id, datetime.now(UTC))
        return {period: money_text(value) for period, value in left.items()}

    def _keep(self, call, known, text, result):
        """Commit the record with its turn and return the session's cost so far.

        If the database fails, the record goes to the spool file and the cost is
        unknown (None).
        """
        chat_session_id = known.session_id
        newest = None
        try:
            with unit_of_work(self.db) as session:
                if result.error is None:
                    newest = history.add_exchange(
                        session, chat_session_id, text, result.text, call.message_id
                    )
                entry_id = outbox.add(session, call, claimed=self.relay is not None)
                session_cost = self._session_cost(
                    session, chat_session_id, call.message_id
                )
        except DBAPIError:
            log.exception(
                "usage %s: the database refused the outbox entry", call.message_id
            )
            self.spool.append(call)
            self.error(
                "database_unavailable",
                "the database is unavailable: this "
                "call's usage is kept on disk and saved when it is back",
            )
            return None
        if newest is not None:
            self.known = known.after(text, result.text, newest)
        if self.relay is not None:
            self.relay.take(entry_id, call.to_payload())
        return session_cost

    def _session_cost(self, session, chat_session_id, current):
        """Saved cost of the session plus this socket's calls the worker has not saved.

        A call the worker saved a moment ago is in the session row already, though
        still pending here until the next poll: it must not count twice.
        """
        mine = {
            message_id: cost
            for message_id, (sid, cost) in self.pending.items()
            if sid == chat_session_id
        }
        # The call just finished is not relayed yet; earlier ones may be saved.
        earlier = [message_id for message_id in mine if message_id != current]
        saved_ids = set()
        if earlier:
            saved_ids = set(
                session.scalars(
                    select(UsageRecord.message_id).where(
                        UsageRecord.message_id.in_(earlier),
                        UsageRecord.user_id == self.user_id,
                    )
                )
            )
        saved = session.scalar(
            select(SessionUsage.cost).where(
                SessionUsage.session_id == chat_session_id,
                SessionUsage.user_id == self.user_id,
            )
        )
        unsaved = (cost or 0 for mid, cost in mine.items() if mid not in saved_ids)
        return (saved or Decimal(0)) + sum(unsaved, Decimal(0))

    def report_saves(self):
        """Send a frame for each call the watcher found saved, and dead letters."""
        saved = []
        while not self.inbox.empty():
            saved.append(self.inbox.get())
        budget = self._budget_if_known() if saved else None
        for found in saved:
            self.pending.pop(found.message_id, None)
            self.send(
                "usage_saved",
                message_id=found.message_id,
                cost=money(found.cost),
                session=_session_totals(found.session),
                budget=budget,
            )
        if self.pending and self._dead_check_due():
            for message_id in self._newly_dead():
                self.dead.add(message_id)
                self.send("usage_status", message_id=message_id, status="dead_letter")

    def _budget_if_known(self):
        try:
            return self._budget()
        except DBAPIError:  # the frame goes without it; the next one has it
            return None

    def _dead_check_due(self):
        return time.monotonic() - self.dead_checked_at >= DEAD_LETTER_CHECK_SECONDS

    def _newly_dead(self):
        """Calls of this socket that became dead letters since the last look.

        A call turns into a dead letter only after the worker's retries, minutes
        after it finished: the dead letters are searched at most every
        ``DEAD_LETTER_CHECK_SECONDS``.
        """
        self.dead_checked_at = time.monotonic()
        try:
            with unit_of_work(self.db) as session:
                return _dead_lettered(session, set(self.pending) - self.dead)
        except DBAPIError as exc:
            log.debug("cannot look for dead letters: %s", exc)
            return set()


def _dead_lettered(session, message_ids):
    """Which of these calls wait as dead letters (`flask usage replay` saves them)."""
    if not message_ids:
        return set()
    found = set()
    for message_id in message_ids:
        needle = json.dumps({"message_id": message_id})[1:-1]
        hit = session.scalar(
            select(DeadLetter.id)
            .where(
                DeadLetter.replayed_at.is_(None), DeadLetter.payload.contains(needle)
            )
            .limit(1)
        )
        if hit is not None:
            found.add(message_id)
    return found


def _session_totals(row):
    if row is None:
        return None
    return {
        "calls": row.calls,
        "cost": money(row.cost),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_creation_tokens": row.cache_creation_tokens,
        "cache_read_tokens": row.cache_read_tokens,
    }


def _text(value):
    """``value`` if it is a string that is valid Unicode, else None.

    JSON can carry a lone surrogate ("\\ud800"); no database or token library
    can take one.
    """
    if not isinstance(value, str):
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


def _parse(raw):
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting is bad input too
        return None
