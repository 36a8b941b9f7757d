"""Conversation history, kept server-side so a session continues where it stopped."""

import json
import uuid

from sqlalchemy import insert, select

from app.models import ChatSession, ChatTurn


class SessionNotFound(LookupError):
    """No session with that id belongs to this user (another user's looks the same)."""


def open_session(session, user_id, session_id, model):
    """The user's session ``session_id``, or a new one when it is None."""
    if session_id is None:
        chat = ChatSession(id=str(uuid.uuid4()), user_id=user_id, model=model)
        session.add(chat)
        session.flush()
        return chat
    chat = session.get(ChatSession, session_id) if isinstance(session_id, str) else None
    if chat is None or chat.user_id != user_id:
        raise SessionNotFound(f"no session {session_id!r}")
    return chat


def messages_for(session, chat_session_id):
    """The Messages API ``messages`` list of the session so far."""
    turns = session.scalars(
        select(ChatTurn)
        .where(ChatTurn.session_id == chat_session_id)
        .order_by(ChatTurn.id)
    )
    return [{"role": t.role, "content": json.loads(t.content)} for t in turns]


def add_exchange(session, chat_session_id, user_text, reply_text, message_id):
    """Append the user's text and Claude's reply (one plain insert, no ORM flush)."""
    session.execute(
        insert(ChatTurn.__table__),
        [
            {
                "session_id": chat_session_id,
                "role": "user",
                "content": json.dumps(user_text),
                "message_id": None,
            },
            {
                "session_id": chat_session_id,
                "role": "assistant",
                "content": json.dumps(reply_text or "(no text)"),
                "message_id": message_id,
            },
        ],
    )
