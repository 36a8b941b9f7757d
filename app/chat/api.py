"""Past chats, for the page to list and reopen: each user sees only their own.

A chat's usage comes from the ledger, so a reopened conversation shows the same
tokens and cents as when it streamed; a call the worker has not saved yet shows
as pending.
"""

import json

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import and_, func, select

from app.auth.access import current_user, error_response, login_required
from app.auth.budgets import money_text
from app.db import unit_of_work
from app.models import ChatSession, ChatTurn, SessionUsage, UsageRecord

bp = Blueprint("chats", __name__, url_prefix="/api/chats")

DEFAULT_LIMIT = 20
MAX_LIMIT = 200
TITLE_CHARS = 60
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "thinking_tokens",
    "web_search_requests",
)


@bp.get("")
@login_required
def list_chats():
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        return error_response(
            400, f"limit must be a whole number from 1 to {MAX_LIMIT}"
        )
    with unit_of_work(_db()) as session:
        chats = recent_chats(session, current_user().id, int(raw))
    return jsonify(chats=chats)


@bp.get("/<chat_id>")
@login_required
def show_chat(chat_id):
    with unit_of_work(_db()) as session:
        found = chat_detail(session, current_user().id, chat_id)
    if found is None:
        # Another user's chat looks exactly like one that does not exist.
        return error_response(404, "no such chat")
    return jsonify(found)


def _db():
    return current_app.extensions["tally.db"]


def recent_chats(session, user_id, limit):
    """The user's chats with at least one exchange, the latest active first."""
    first_text = (
        select(ChatTurn.content)
        .where(ChatTurn.session_id == ChatSession.id, ChatTurn.role == "user")
        .order_by(ChatTurn.id)
        .limit(1)
        .scalar_subquery()
    )
    last_at = (
        select(func.max(ChatTurn.created_at))
        .where(ChatTurn.session_id == ChatSession.id)
        .scalar_subquery()
    )
    query = (
        select(
            ChatSession.id,
            ChatSession.model,
            ChatSession.created_at,
            first_text.label("first_text"),
            last_at.label("last_at"),
            SessionUsage.calls,
            SessionUsage.cost,
        )
        .outerjoin(
            SessionUsage,
            and_(
                SessionUsage.session_id == ChatSession.id,
                SessionUsage.user_id == ChatSession.user_id,
            ),
        )
        .where(ChatSession.user_id == user_id, first_text.is_not(None))
        .order_by(last_at.desc(), ChatSession.id)
        .limit(limit)
    )
    return [_summary(row) for row in session.execute(query)]


def chat_detail(session, user_id, chat_id):
    """The chat's turns with each saved call's usage, or None if not the user's."""
    chat = session.get(ChatSession, chat_id)
    if chat is None or chat.user_id != user_id:
        return None
    turns = session.scalars(
        select(ChatTurn).where(ChatTurn.session_id == chat_id).order_by(ChatTurn.id)
    ).all()
    ids = [t.message_id for t in turns if t.message_id]
    saved = {
        record.message_id: record
        for record in session.scalars(
            select(UsageRecord).where(
                UsageRecord.message_id.in_(ids), UsageRecord.user_id == user_id
            )
        )
    }
    totals = session.get(SessionUsage, (chat_id, user_id))
    return {
        "chat": {
            "id": chat.id,
            "model": chat.model,
            "started_at": chat.created_at.isoformat(),
            "calls": totals.calls if totals else 0,
            "cost": money_text(totals.cost) if totals else "0.00",
        },
        "turns": [_turn(turn, saved.get(turn.message_id)) for turn in turns],
    }


def _summary(row):
    return {
        "id": row.id,
        "title": _title(text_of(json.loads(row.first_text))),
        "model": row.model,
        "started_at": row.created_at.isoformat(),
        "last_at": (row.last_at or row.created_at).isoformat(),
        "calls": row.calls or 0,
        "cost": money_text(row.cost) if row.cost is not None else "0.00",
    }


def _turn(turn, record):
    found = {
        "role": turn.role,
        "text": text_of(json.loads(turn.content)),
        "message_id": turn.message_id,
    }
    if turn.role == "assistant":
        found["usage"] = _usage(record)
    return found


def _usage(record):
    """The call's saved figures, or None while the worker has not saved it."""
    if record is None:
        return None
    figures = {name: getattr(record, name) for name in USAGE_FIELDS}
    return figures | {"cost": money_text(record.cost), "partial": record.partial}


def text_of(content):
    """The text of Messages API content: a string, or the text of its blocks."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else []
    return "".join(b.get("text", "") for b in blocks if isinstance(b, dict))


def _title(text):
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
