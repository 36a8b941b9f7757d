"""Sign-in. The development login exists only when TALLY_ENV is development."""

import re

from flask import Blueprint, abort, current_app, jsonify, request
from flask_jwt_extended import create_access_token
from sqlalchemy import select

from app.db import unit_of_work
from app.models import User

bp = Blueprint("auth", __name__, url_prefix="/api/auth")

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


@bp.post("/dev-login")
def dev_login():
    if not current_app.extensions["tally.settings"].development:
        abort(404)
    username = (request.get_json(silent=True) or {}).get("username")
    if not isinstance(username, str) or not USERNAME.match(username):
        return jsonify(error="username: 1-80 letters, digits, '.', '_' or '-'"), 400
    with unit_of_work(current_app.extensions["tally.db"]) as session:
        user = get_or_create_user(session, username)
        if user.disabled:
            return jsonify(error="this account is disabled"), 403
        token = create_access_token(identity=str(user.id))
        body = {"id": user.id, "username": user.username}
    return jsonify(access_token=token, user=body)


def get_or_create_user(session, username):
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username)
        session.add(user)
        session.flush()
    return user
