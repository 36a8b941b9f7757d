"""The token guard: one look at every open socket's token, on the real database."""

from dataclasses import dataclass

from flask_jwt_extended import decode_token
from sqlalchemy import text

from app import create_app
from app.auth.tokens import revoke
from app.chat.guard import GONE, REVOKED, TokenGuard
from app.db import unit_of_work
from tests.conftest import login


@dataclass(eq=False)
class Held:
    """What the guard reads of a socket, and what it writes back."""

    user_id: int
    claims: dict
    token: str
    signed_out: tuple | None = None


def test_one_look_marks_exactly_the_revoked_and_the_disabled(settings, db):
    app = create_app(settings)
    factory = app.extensions["tally.db"]
    held = {}
    for name in ("ann", "bob", "cat", "dan"):
        signed_in = login(app, name)
        token = signed_in["access_token"]
        with app.app_context():
            claims = decode_token(token)
        held[name] = Held(signed_in["user"]["id"], claims, token)
    # Two tabs of dan's: one token signed out, the other from a later sign-in.
    later = login(app, "dan")["access_token"]
    with app.app_context():
        held["dan2"] = Held(held["dan"].user_id, decode_token(later), later)
    with app.app_context(), unit_of_work(factory) as session:
        revoke(session, held["bob"].user_id, held["bob"].claims, held["bob"].token)
        revoke(session, held["dan"].user_id, held["dan"].claims, held["dan"].token)
    with db.begin() as conn:
        conn.execute(text("UPDATE users SET disabled = true WHERE username = 'cat'"))

    guard = TokenGuard(factory, interval=3600)
    for socket in held.values():
        guard.watch(socket)
    assert guard.check_once() == 3

    marks = {name: socket.signed_out for name, socket in held.items()}
    assert marks == {
        "ann": None,
        "bob": (held["bob"].token, REVOKED),
        "cat": (held["cat"].token, GONE),
        "dan": (held["dan"].token, REVOKED),
        "dan2": None,
    }
