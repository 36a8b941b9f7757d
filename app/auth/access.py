"""Who may call an HTTP route: the Bearer token's user, and admins for some."""

from functools import wraps

from flask import abort, current_app, g, jsonify, request

from app.auth.identity import NotAuthenticated, user_from_token
from app.db import unit_of_work


def bearer_token():
    """The token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def current_user():
    """The signed-in ``User`` of this request; answers 401 when there is none."""
    if "tally_user" not in g:
        try:
            with unit_of_work(current_app.extensions["tally.db"]) as session:
                g.tally_user = user_from_token(session, bearer_token())
        except NotAuthenticated as exc:
            abort(unauthorized(str(exc)))
    return g.tally_user


def unauthorized(message):
    response = jsonify(error=message)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="tally"'
    return response


def login_required(view):
    @wraps(view)
    def signed_in(*args, **kwargs):
        current_user()
        return view(*args, **kwargs)

    return signed_in


def admin_required(view):
    @wraps(view)
    def admin_only(*args, **kwargs):
        if not current_user().is_admin:
            abort(error_response(403, "only an admin may do this"))
        return view(*args, **kwargs)

    return admin_only


def error_response(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response
