"""Accounts: create, find, sign in, budgets. Functions flush; the caller commits."""

import logging
import re
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.auth import passwords
from app.db import MONEY_PLACES
from app.models import User

log = logging.getLogger(__name__)

USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,80}\Z")
USERNAME_RULE = "username: 1-80 letters, digits, '.', '_' or '-'"
ROLES = ("user", "admin")
_NOT_IN_USERNAME = re.compile(r"[^A-Za-z0-9_.-]+")


class AccountError(ValueError):
    """A request about an account that cannot be done; the message says why."""


def find_user(session, username):
    return session.scalar(select(User).where(User.username == username))


def create_user(session, username, password=None, role="user"):
    """A new account; without a password it can only sign in by token."""
    if not isinstance(username, str) or not USERNAME.match(username):
        raise AccountError(USERNAME_RULE)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if find_user(session, username) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, role=role)
    if password is not None:
        user.password_hash = _hash(password)
    session.add(user)
    session.flush()
    log.info("user %s (%s) created as %s", user.id, username, role)
    return user


def _hash(password):
    try:
        return passwords.hash_password(password)
    except passwords.WeakPassword as exc:
        raise AccountError(str(exc)) from None


def get_or_create_user(session, username):
    """The account named ``username``, created on first use (development login)."""
    return find_user(session, username) or create_user(session, username)


def authenticate(session, username, password):
    """The user whose password this is, or None; disabled users are returned too."""
    user = find_user(session, username) if isinstance(username, str) else None
    if user is None or user.password_hash is None:
        return passwords.verify_nobody(password) or None
    if not passwords.verify_password(password, user.password_hash):
        return None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    return user


def user_for_subject(session, subject):
    """The account of an outside issuer's subject, created when it first signs in."""
    user = session.scalar(select(User).where(User.external_subject == subject))
    if user is not None:
        return user
    try:
        # A savepoint: a concurrent first sign-in of the same subject may win.
        with session.begin_nested():
            user = User(username=_free_username(session, subject))
            user.external_subject = subject
            session.add(user)
    except IntegrityError:
        return session.scalar(select(User).where(User.external_subject == subject))
    log.info("user %s (%s) created for subject %r", user.id, user.username, subject)
    return user


def _free_username(session, subject):
    base = _NOT_IN_USERNAME.sub("_", subject).strip("_")[:72] or "user"
    candidate, number = base, 2
    # Never reuse a local account of the same name: that would hand it over.
    while find_user(session, candidate) is not None:
        candidate, number = f"{base}-{number}", number + 1
    return candidate


def parse_usd(text):
    """A budget in US dollars from text: a Decimal >= 0, or None for "none"."""
    if text is None or text.strip().lower() in ("none", "off", ""):
        return None
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise AccountError(f"not an amount in US dollars: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise AccountError(f"a budget is 0 or more US dollars, not {text!r}")
    if value != round(value, MONEY_PLACES):
        raise AccountError(f"a budget has at most {MONEY_PLACES} decimal places")
    return value
