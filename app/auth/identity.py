"""Who the user is: always from a verified JWT, never from the environment.

Every way in (HTTP routes, the chat websocket, token refresh and sign-out)
verifies tokens here. Two kinds are accepted: HS256 tokens Tally signed itself,
and, when an outside issuer is configured, its RS256/ES256 tokens. Nothing else,
``alg: none`` included.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from flask import current_app
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from sqlalchemy import false, select

from app.auth import external
from app.auth.tokens import is_revoked, revocation_keys, revoked
from app.auth.users import user_for_subject
from app.models import User

LOCAL_ALGORITHM = "HS256"


class NotAuthenticated(Exception):
    """The token is missing, invalid, expired, revoked, or names no active user."""


@dataclass(frozen=True)
class Verified:
    claims: dict
    external: bool


def user_from_token(session, token):
    """The active ``User`` a raw access token belongs to."""
    return verify(session, token, "access")[1]


def verify(session, token, kind="access"):
    """``(claims, user)`` of a valid, unrevoked token of an active user.

    ``kind`` is "access" or "refresh"; None accepts either (for sign-out).
    """
    verified = verified_claims(token, kind)
    if is_revoked(session, verified.claims, token):
        raise NotAuthenticated("this token was revoked: sign in again")
    user = _user(session, verified)
    if user is None or user.disabled:
        raise NotAuthenticated("this account does not exist or is disabled")
    return verified.claims, user


def verified_claims(token, kind="access"):
    """The checked claims of ``token`` (signature, expiry, issuer, audience, type)."""
    if not isinstance(token, str) or not token:
        raise NotAuthenticated("sign in first: no token was sent")
    try:
        verified = _decode(token)
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("the token has expired: sign in again") from None
    except (jwt.PyJWTError, JWTExtendedException) as exc:
        raise NotAuthenticated(f"invalid token: {exc}") from None
    # Outside issuers' tokens are access tokens only: Tally refreshes its own.
    found = "access" if verified.external else verified.claims.get("type")
    if kind is not None and found != kind:
        article = "an" if kind == "access" else "a"
        raise NotAuthenticated(f"invalid token: not {article} {kind} token")
    return verified


def _decode(token):
    header = jwt.get_unverified_header(token)
    alg = header.get("alg")
    if alg == LOCAL_ALGORITHM:
        return Verified(decode_token(token), external=False)
    issuer = current_app.extensions.get("tally.issuer")
    if issuer is not None and alg in external.ALGORITHMS:
        return Verified(issuer.claims(token, header), external=True)
    raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} is not accepted")


def _user(session, verified):
    subject = verified.claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise NotAuthenticated("invalid token: bad subject")
    if verified.external:
        return user_for_subject(session, subject)
    try:
        return session.get(User, int(subject))
    except ValueError:
        raise NotAuthenticated("invalid token: bad subject") from None


def still_valid(session, user_id, claims, token, *also):
    """The active ``User`` of a token verified earlier, and ``also``, in one query.

    For a token held open on a socket: the signature and claims were checked when
    it was accepted, so this only asks whether it was revoked since, or its user
    disabled. Raises ``NotAuthenticated`` like ``verify``. ``also``: scalar
    subqueries the caller wants answered in the same round trip; their values
    follow the user in the returned tuple.
    """
    keys = revocation_keys(claims, token)
    found = session.execute(
        select(User, revoked(keys) if keys else false(), *also).where(
            User.id == user_id
        )
    ).first()
    if found is not None and found[1]:
        raise NotAuthenticated("this token was revoked: sign in again")
    if found is None or found[0].disabled:
        raise NotAuthenticated("this account does not exist or is disabled")
    return (found[0], *found[2:])


def token_expires_at(token):
    """When a token accepted by ``user_from_token`` expires (UTC), or None.

    Reads the claim without checking the signature: call it only on a token that
    was verified already.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return datetime.fromtimestamp(exp, UTC)
