"""Conversation history, kept server-side so a session continues where it stopped."""

import json
import uuid
from dataclasses import dataclass

from sqlalchemy import func, insert, select

from app.models import ChatSession, ChatTurn


class SessionNotFound(LookupError):
    """No session with that id belongs to this user (another user's looks the same)."""


@dataclass(frozen=True)
class Known:
    """A session's messages as a socket last saw them, up to its newest turn.

    Turns are only ever appended, one message each: while the session has as many
    turns as this holds messages, and the same newest one, the messages are the
    same and the socket need not read them again. (The newest id alone is not
    enough: another tab's exchange may have been kept just before this one's.)
    """

    session_id: str
    messages: tuple
    newest_turn: int | None

    @property
    def mark(self):
        """What ``turns_mark`` finds while these messages are the whole session."""
        return [self.newest_turn, len(self.messages)]

    def after(self, user_text, reply_text, newest_turn):
        added = _exchange(user_text, reply_text)
        return Known(self.session_id, (*self.messages, *added), newest_turn)


def turns_mark(session_id):
    """The session's newest turn id and its number of turns, as two columns for a
    query that reads more (compared with ``Known.mark``)."""
    return tuple(
        select(aggregate(ChatTurn.id))
        .where(ChatTurn.session_id == session_id)
        .scalar_subquery()
        for aggregate in (func.max, func.count)
    )


def _exchange(user_text, reply_text):
    return (
        {"role": "user", "content": user_text},
        {"role": "assistant", "content": reply_text or "(no text)"},
    )


def open_session(session, user_id, session_id, model):
    """``Known`` for the user's session ``session_id``, or a new one when it is None.

    One statement either way: an insert, or the session's owner with its turns.
    """
    if session_id is None:
        new = str(uuid.uuid4())
        session.execute(
            insert(ChatSession.__table__).values(id=new, user_id=user_id, model=model)
        )
        return Known(new, (), None)
    rows = []
    if isinstance(session_id, str):
        rows = session.execute(
            select(ChatSession.user_id, ChatTurn.id, ChatTurn.role, ChatTurn.content)
            .outerjoin(ChatTurn, ChatTurn.session_id == ChatSession.id)
            .where(ChatSession.id == session_id)
            .order_by(ChatTurn.id)
        ).all()
    if not rows or rows[0].user_id != user_id:
        raise SessionNotFound(f"no session {session_id!r}")
    turns = [row for row in rows if row.id is not None]
    messages = tuple({"role": t.role, "content": json.loads(t.content)} for t in turns)
    return Known(session_id, messages, turns[-1].id if turns else None)


def add_exchange(session, chat_session_id, user_text, reply_text, message_id):
    """Append the user's text and Claude's reply; return the session's newest turn id.

    One plain multi-row insert, no ORM flush. The newest id is what
    ``newest_turn`` finds, whichever of the two rows holds it.
    """
    rows = [
        {
            "session_id": chat_session_id,
            "role": message["role"],
            "content": json.dumps(message["content"]),
            "message_id": message_id if message["role"] == "assistant" else None,
        }
        for message in _exchange(user_text, reply_text)
    ]
    ids = session.scalars(
        insert(ChatTurn.__table__).values(rows).returning(ChatTurn.id)
    ).all()
    return max(ids)
