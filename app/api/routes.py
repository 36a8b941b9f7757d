"""Usage and account routes. Every answer is scoped to the signed-in user;
an admin may name a user with ``?user=`` or, without it, sees everyone.
"""

from datetime import UTC, date, datetime
from decimal import Decimal

from flask import current_app, jsonify, request

from app.api import bp, queries
from app.api.filters import BadFilter, read_filters
from app.auth.access import current_user, error_response, login_required
from app.auth.budgets import budget_status, money_text
from app.auth.limits import chat_limits
from app.db import unit_of_work

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _db():
    return current_app.extensions["tally.db"]


@bp.errorhandler(BadFilter)
def bad_filter(error):
    return error_response(error.status, str(error))


@bp.get("/me")
@login_required
def me():
    user = current_user()
    with unit_of_work(_db()) as session:
        budget = budget_status(session, user.id, datetime.now(UTC))
    return jsonify(
        user={"id": user.id, "username": user.username, "role": user.role},
        budget=to_json(budget),
        limits=chat_limits(current_app.extensions["tally.settings"]),
    )


@bp.get("/usage/daily")
@login_required
def usage_daily():
    with unit_of_work(_db()) as session:
        filters = read_filters(session, current_user(), request.args)
        rows = queries.daily(session, filters)
    return jsonify(
        filters=filters.public(),
        days=to_json(rows),
        totals=to_json(queries.totals(rows)),
    )


@bp.get("/usage/models")
@login_required
def usage_models():
    with unit_of_work(_db()) as session:
        filters = read_filters(session, current_user(), request.args)
        rows = queries.models(session, filters)
    return jsonify(
        filters=filters.public(),
        models=to_json(rows),
        totals=to_json(queries.totals(rows)),
    )


@bp.get("/usage/sessions")
@login_required
def usage_sessions():
    limit = _limit(request.args.get("limit"))
    with unit_of_work(_db()) as session:
        filters = read_filters(session, current_user(), request.args)
        rows = queries.sessions(session, filters, limit)
    return jsonify(filters=filters.public(), sessions=to_json(rows, filters.tz))


@bp.get("/usage/sessions/<session_id>")
@login_required
def usage_session(session_id):
    with unit_of_work(_db()) as session:
        filters = read_filters(session, current_user(), request.args)
        owner = queries.session_owner(session, session_id, filters.user_id)
        # Another user's session looks exactly like one that does not exist.
        if owner is None:
            return error_response(404, "no such session")
        summary, calls = queries.session_detail(session, session_id, owner)
    return jsonify(
        session=to_json(summary, filters.tz), calls=to_json(calls, filters.tz)
    )


def _limit(raw):
    if raw in (None, ""):
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadFilter(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def to_json(value, tz=UTC):
    """Money as exact decimal strings, days as YYYY-MM-DD, times in ``tz``."""
    if isinstance(value, list):
        return [to_json(v, tz) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v, tz) for k, v in value.items()}
    if isinstance(value, Decimal):
        return money_text(value)
    if isinstance(value, datetime):
        return value.astimezone(tz).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value
