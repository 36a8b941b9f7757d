"""Password hashes: scrypt from the standard library, parameters stored per hash.

A hash reads ``scrypt$n=131072,r=8,p=1$<salt>$<key>`` (base64), so the cost can
rise later without making old hashes unreadable; ``needs_rehash`` says when.
The parameters are OWASP's minimum for scrypt:
https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html
"""

import base64
import hashlib
import hmac
import secrets
import threading

SCHEME = "scrypt"
COST = {"n": 2**17, "r": 8, "p": 1}
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 8
# Each hash takes 128 MiB for most of a second: a burst of sign-ins queues here
# instead of taking all the memory.
_HASHING = threading.BoundedSemaphore(2)


class WeakPassword(ValueError):
    """The password is too short to be worth hashing."""


def hash_password(password, cost=None):
    """A new salted hash of ``password`` with the current (or given) cost."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    cost = cost or COST
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, cost)
    params = ",".join(f"{name}={cost[name]}" for name in ("n", "r", "p"))
    return f"{SCHEME}${params}${_b64(salt)}${_b64(key)}"


def verify_password(password, stored):
    """True when ``password`` matches the ``stored`` hash; False for any bad hash."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    cost, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, cost), key)


def needs_rehash(stored):
    parsed = _parse(stored)
    return parsed is None or parsed[0] != COST


def _derive(password, salt, cost):
    # scrypt needs 128 * n * r bytes; allow that plus headroom.
    maxmem = 128 * cost["n"] * cost["r"] + 2**20
    with _HASHING:
        return hashlib.scrypt(
            password.encode(), salt=salt, dklen=KEY_BYTES, maxmem=maxmem, **cost
        )


def _parse(stored):
    try:
        scheme, params, salt, key = stored.split("$")
        cost = {k: int(v) for k, v in (p.split("=") for p in params.split(","))}
        if scheme != SCHEME or set(cost) != {"n", "r", "p"}:
            return None
        return cost, _unb64(salt), _unb64(key)
    except (AttributeError, ValueError):
        return None


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def _unb64(text):
    return base64.b64decode(text.encode("ascii"), validate=True)


def verify_nobody(password):
    """Spend the time a real check takes, so a missing account does not show."""
    _derive(password, bytes(SALT_BYTES), COST)
    return False
