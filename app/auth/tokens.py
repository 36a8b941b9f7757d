"""Local tokens: issue an access and refresh pair, revoke them at sign-out.

An access token carries the ``jti`` of the refresh token it came with (``rjti``),
so revoking the refresh token also revokes every access token made from it.
"""

import hashlib
import logging
import uuid
from datetime import UTC, datetime

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db import unit_of_work
from app.models import RevokedToken

log = logging.getLogger(__name__)

REFRESH_CLAIM = "rjti"


def issue_tokens(user_id):
    """A new sign-in: an access token and the refresh token it belongs to."""
    refresh_jti = str(uuid.uuid4())
    refresh = create_refresh_token(
        identity=str(user_id), additional_claims={"jti": refresh_jti}
    )
    return {
        "access_token": access_token(user_id, refresh_jti),
        "refresh_token": refresh,
    }


def access_token(user_id, refresh_jti=None):
    claims = {REFRESH_CLAIM: refresh_jti} if refresh_jti else None
    return create_access_token(identity=str(user_id), additional_claims=claims)


def revocation_keys(claims, token=None):
    """The blocklist keys that revoke a token: its own, and its refresh token's."""
    own = claims.get("jti") or (token and _digest(token))
    return [key for key in (own, claims.get(REFRESH_CLAIM)) if key]


def _digest(token):
    # Outside issuers need not set a jti; the token itself identifies it.
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def is_revoked(session, claims, token=None):
    keys = revocation_keys(claims, token)
    return bool(keys) and session.scalar(select(revoked(keys))) is True


def revoked(keys):
    """A SQL truth value: one of these blocklist keys is on the list."""
    return select(RevokedToken.jti).where(RevokedToken.jti.in_(keys)).exists()


def revoke(session, user_id, claims, token=None, now=None):
    """Refuse this token, and the refresh token it came with, from now on."""
    now = now or datetime.now(UTC)
    rows = [
        {"jti": key, "user_id": user_id, "expires_at": expiry, "revoked_at": now}
        for key, expiry in _expiries(claims, token, now)
    ]
    table = RevokedToken.__table__
    session.execute(_insert(session, table).values(rows).on_conflict_do_nothing())
    # Rows of tokens that expired anyway protect nothing any more.
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    log.info("user %s signed out: %d token(s) revoked", user_id, len(rows))


def _expiries(claims, token, now):
    own = datetime.fromtimestamp(claims["exp"], UTC)
    keys = revocation_keys(claims, token)
    if len(keys) == 1:
        return [(keys[0], own)]
    # The refresh token's own expiry is not in the access token: use its bound.
    refresh_until = now + current_app.config["JWT_REFRESH_TOKEN_EXPIRES"]
    return [(keys[0], own), (keys[1], refresh_until)]


def _insert(session, table):
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def blocklist_loader(_jwt_header, jwt_payload):
    """For flask-jwt-extended's own checks (``jwt_required``): the same blocklist."""
    with unit_of_work(current_app.extensions["tally.db"]) as session:
        return is_revoked(session, jwt_payload)
