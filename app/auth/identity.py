"""Who the user is: always from a verified JWT, never from the environment."""

from flask_jwt_extended import decode_token
from jwt.exceptions import PyJWTError

from app.models import User


class NotAuthenticated(Exception):
    """The token is missing, invalid, expired, or names no active user."""


def user_from_token(session, token):
    """The active ``User`` a raw access token belongs to."""
    if not isinstance(token, str) or not token:
        raise NotAuthenticated("sign in first: no token was sent")
    try:
        claims = decode_token(token)
    except PyJWTError as exc:
        raise NotAuthenticated(f"invalid token: {exc}") from None
    if claims.get("type") != "access":
        raise NotAuthenticated("invalid token: not an access token")
    user = session.get(User, _user_id(claims.get("sub")))
    if user is None or user.disabled:
        raise NotAuthenticated("this account does not exist or is disabled")
    return user


def _user_id(subject):
    try:
        return int(subject)
    except (TypeError, ValueError):
        raise NotAuthenticated("invalid token: bad subject") from None
