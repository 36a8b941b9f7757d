"""Sign-in, token refresh and sign-out. The development login exists only in
development: elsewhere its route is never registered.
"""

import logging
import math
from datetime import timedelta

from flask import Blueprint, current_app, jsonify, request

from app import config
from app.auth import external, tokens, users
from app.auth.access import bearer_token, error_response, unauthorized
from app.auth.identity import NotAuthenticated, verify
from app.auth.limits import ChatRateLimiter, SignInThrottle
from app.db import unit_of_work
from app.extensions import jwt

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, url_prefix="/api/auth")
dev_bp = Blueprint("dev_auth", __name__, url_prefix="/api/auth")


@bp.record_once
def _set_up(state):
    """Configure sign-in for ``state.app``; refuse to start when it is unsafe."""
    app = state.app
    settings = app.extensions["tally.settings"]
    config.require_strong_secret(settings)
    app.config.update(
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=settings.access_token_minutes),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=settings.refresh_token_days),
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],
    )
    app.extensions["tally.issuer"] = external.load_issuer(settings)
    app.extensions["tally.chat_limiter"] = ChatRateLimiter(settings.chats_per_minute)
    app.extensions["tally.sign_in_throttle"] = SignInThrottle()
    jwt.token_in_blocklist_loader(tokens.blocklist_loader)
    if settings.development:
        app.register_blueprint(dev_bp)


def _db():
    return current_app.extensions["tally.db"]


def user_body(user):
    return {"id": user.id, "username": user.username, "role": user.role}


@bp.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return error_response(400, "send JSON with a username and a password")
    throttle, address = current_app.extensions["tally.sign_in_throttle"], _address()
    wait = throttle.wait(username, address)
    if wait > 0:
        log.warning("sign-in for %r from %s throttled", username, address)
        return _too_many(wait)
    with unit_of_work(_db()) as session:
        user = users.authenticate(session, username, password)
        if user is None:
            throttle.failed(username, address)
            log.info("sign-in refused for %r: wrong username or password", username)
            return unauthorized("wrong username or password")
        throttle.succeeded(username)
        if user.disabled:
            return error_response(403, "this account is disabled")
        issued = tokens.issue_tokens(user.id)
        log.info("user %s signed in", user.id)
        return jsonify(**issued, user=user_body(user))


def _address():
    return request.remote_addr


def _too_many(wait):
    seconds = max(1, math.ceil(wait))
    response = error_response(
        429, f"too many failed sign-ins: try again in {seconds} s"
    )
    response.headers["Retry-After"] = str(seconds)
    return response


@bp.post("/refresh")
def refresh():
    """A new access token for the refresh token in the Authorization header."""
    try:
        with unit_of_work(_db()) as session:
            claims, user = verify(session, bearer_token(), "refresh")
            token = tokens.access_token(user.id, claims["jti"])
            return jsonify(access_token=token, user=user_body(user))
    except NotAuthenticated as exc:
        return unauthorized(str(exc))


@bp.post("/logout")
def logout():
    """Revoke the presented token (access or refresh) and its refresh token."""
    token = bearer_token()
    try:
        with unit_of_work(_db()) as session:
            claims, user = verify(session, token, kind=None)
            tokens.revoke(session, user.id, claims, token)
    except NotAuthenticated as exc:
        return unauthorized(str(exc))
    return jsonify(revoked=True)


@dev_bp.post("/dev-login")
def dev_login():
    """Sign in by name alone: development only, never registered elsewhere."""
    username = (request.get_json(silent=True) or {}).get("username")
    if not isinstance(username, str) or not users.USERNAME.match(username):
        return error_response(400, users.USERNAME_RULE)
    with unit_of_work(_db()) as session:
        user = users.get_or_create_user(session, username)
        if user.disabled:
            return error_response(403, "this account is disabled")
        issued = tokens.issue_tokens(user.id)
        return jsonify(**issued, user=user_body(user))
