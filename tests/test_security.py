"""Who gets in: local and outside tokens, sign-in, sign-out, production settings.

Every bad token is tried twice, against the HTTP API and against the chat
websocket, on one app that accepts both local tokens and an outside issuer's.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask_jwt_extended import create_access_token
from sqlalchemy import text

from app import config, create_app
from app.auth import passwords, users
from app.auth.tokens import issue_tokens
from app.db import unit_of_work
from app.models import User
from tests.conftest import ChatClient, LiveServer, replace_settings

ISSUER = "https://sso.example.test/"
AUDIENCE = "tally-test"
PASSWORD = "correct horse battery"


# --- keys, apps and tokens ----------------------------------------------------


def pem_public(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def app(app):
    """The shared app, with the outbox relay its first request starts stopped after."""
    yield app
    app.extensions["tally.relay"].stop()


@pytest.fixture
def sso_app(settings, db, tmp_path, rsa_key):
    """An app that trusts RS256 tokens of ``ISSUER`` for ``AUDIENCE``."""
    key_file = tmp_path / "issuer.pem"
    key_file.write_bytes(pem_public(rsa_key))
    sso = replace_settings(
        settings,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_public_key_file=key_file,
    )
    return create_app(sso)


@pytest.fixture
def sso_server(sso_app):
    server = LiveServer(sso_app)
    yield server
    server.stop()


def outside_token(key, subject="auth0|jane", algorithm="RS256", kid=None, **changes):
    """A token as the outside issuer would sign it, with ``changes`` to its claims."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims | changes, key, algorithm=algorithm, headers=headers)


def unsigned_token(claims):
    def part(value):
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def add_user(app, username, password=None, role="user", disabled=False):
    with unit_of_work(app.extensions["tally.db"]) as session:
        user = users.create_user(session, username, password, role=role)
        user.disabled = disabled
        return user.id


def set_disabled(app, username, disabled=True):
    with unit_of_work(app.extensions["tally.db"]) as session:
        users.find_user(session, username).disabled = disabled


def local_tokens(app, user_id):
    with app.app_context():
        return issue_tokens(user_id)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def me(app, token):
    return app.test_client().get("/api/me", headers=bearer(token))


def post(app, path, token=None, **body):
    headers = bearer(token) if token else {}
    return app.test_client().post(path, headers=headers, json=body or None)


def close_code(client):
    opcode, data = client.ws.recv_data(control_frame=True)
    assert opcode == 8  # close
    return int.from_bytes(data[:2], "big")


def socket_refuses(server, token):
    """The chat socket's answer to ``token``: (error frame, close code)."""
    client = ChatClient(server.ws_url, token=token)
    client.send(type="chat", text="replay:01_text_claude-sonnet-4-5.sse")
    frame = client.receive()
    code = close_code(client)
    client.close()
    return frame, code


# --- the bad tokens -------------------------------------------------------------


def bad_token(case, app, rsa_key, other_rsa_key):
    """A token of kind ``case`` that must be refused; the user behind it exists."""
    alice = add_user(app, "alice")
    past = int(time.time()) - 60
    with app.app_context():
        local = issue_tokens(alice)
    if case == "alg_none":
        now = int(time.time())
        return unsigned_token(
            {"sub": str(alice), "type": "access", "iat": now, "exp": now + 300}
        )
    if case == "alg_none_outside":
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "jane", "exp": now + 300}
        return unsigned_token(claims)
    if case == "wrong_secret":
        return jwt.encode(
            {"sub": str(alice), "type": "access", "exp": past + 600, "jti": "x"},
            "another-secret-" + "y" * 40,
            algorithm="HS256",
        )
    if case == "public_key_as_hmac_secret":
        claims = {"sub": str(alice), "type": "access", "exp": past + 600}
        return _hmac_with(pem_public(rsa_key), claims)
    if case == "wrong_key":
        return outside_token(other_rsa_key)
    if case == "wrong_audience":
        return outside_token(rsa_key, aud="someone-else")
    if case == "wrong_issuer":
        return outside_token(rsa_key, iss="https://evil.example.test/")
    if case == "expired_local":
        with app.app_context():
            return create_access_token(str(alice), expires_delta=timedelta(-1))
    if case == "expired_outside":
        return outside_token(rsa_key, exp=past)
    if case == "no_expiry_outside":
        token = outside_token(rsa_key)
        claims = jwt.decode(token, options={"verify_signature": False})
        del claims["exp"]
        return jwt.encode(claims, rsa_key, algorithm="RS256")
    if case == "revoked_local":
        assert post(app, "/api/auth/logout", local["access_token"]).status_code == 200
        return local["access_token"]
    if case == "revoked_outside":
        token = outside_token(rsa_key)
        assert post(app, "/api/auth/logout", token).status_code == 200
        return token
    if case == "disabled_local":
        set_disabled(app, "alice")
        return local["access_token"]
    if case == "disabled_outside":
        token = outside_token(rsa_key, subject="bob")
        assert me(app, token).status_code == 200  # bob is created on first sight
        set_disabled(app, "bob")
        return token
    if case == "refresh_as_access":
        return local["refresh_token"]
    if case == "unknown_user":
        with app.app_context():
            return create_access_token("999999")
    raise AssertionError(case)


def _hmac_with(secret, claims):
    header = {"alg": "HS256", "typ": "JWT"}

    def part(value):
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part(header) + b"." + part(claims)
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(signature).rstrip(b"=")
    return (signing_input + b"." + sig).decode()


BAD_TOKENS = {
    "alg_none": "invalid token: algorithm 'none' is not accepted",
    "alg_none_outside": "invalid token: algorithm 'none' is not accepted",
    "wrong_secret": "invalid token: Signature verification failed",
    "public_key_as_hmac_secret": "invalid token: Signature verification failed",
    "wrong_key": "invalid token: Signature verification failed",
    "wrong_audience": "invalid token: Audience doesn't match",
    "wrong_issuer": "invalid token: Invalid issuer",
    "expired_local": "the token has expired: sign in again",
    "expired_outside": "the token has expired: sign in again",
    "no_expiry_outside": 'invalid token: Token is missing the "exp" claim',
    "revoked_local": "this token was revoked: sign in again",
    "revoked_outside": "this token was revoked: sign in again",
    "disabled_local": "this account does not exist or is disabled",
    "disabled_outside": "this account does not exist or is disabled",
    "refresh_as_access": "invalid token: not an access token",
    "unknown_user": "this account does not exist or is disabled",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_tokens_are_refused_by_http_and_socket(
    case, sso_server, simulator, rsa_key, other_rsa_key
):
    app = sso_server.app
    token = bad_token(case, app, rsa_key, other_rsa_key)
    before = simulator.requests_served()

    response = me(app, token)
    frame, code = socket_refuses(sso_server, token)

    assert response.status_code == 401
    assert response.get_json() == {"error": BAD_TOKENS[case]}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tally"'
    assert frame == {
        "type": "error",
        "code": "unauthorized",
        "message": BAD_TOKENS[case],
    }
    assert code == 4401
    assert simulator.requests_served() == before


def test_no_token_and_garbage_are_refused(sso_app):
    client = sso_app.test_client()
    assert client.get("/api/me").get_json() == {
        "error": "sign in first: no token was sent"
    }
    response = client.get("/api/me", headers=bearer("not-a-jwt"))
    assert response.status_code == 401
    assert response.get_json()["error"].startswith("invalid token: ")
    basic = client.get("/api/me", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401


def test_outside_token_maps_its_subject_to_a_user(sso_server, rsa_key, db):
    add_user(sso_server.app, "jane")  # a local account the subject must not take
    token = outside_token(rsa_key, subject="jane")

    first = me(sso_server.app, token)
    again = me(sso_server.app, outside_token(rsa_key, subject="jane"))
    with_kid = me(sso_server.app, outside_token(rsa_key, subject="jane", kid="k7"))
    odd = me(sso_server.app, outside_token(rsa_key, subject="auth0|Jane Doe/1"))
    client = ChatClient(sso_server.ws_url, token=token)
    ready = client.receive()
    client.close()

    assert first.status_code == 200
    assert first.get_json()["user"]["username"] == "jane-2"
    assert again.get_json()["user"] == first.get_json()["user"]
    assert with_kid.get_json()["user"] == first.get_json()["user"]  # PEM: any kid
    assert odd.get_json()["user"]["username"] == "auth0_Jane_Doe_1"
    assert ready["type"] == "ready"
    assert ready["user"]["username"] == "jane-2"
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT username, external_subject FROM users ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("jane", None),
        ("jane-2", "jane"),
        ("auth0_Jane_Doe_1", "auth0|Jane Doe/1"),
    ]


def test_local_tokens_keep_working_beside_outside_ones(sso_app):
    alice = add_user(sso_app, "alice")
    token = local_tokens(sso_app, alice)["access_token"]
    assert me(sso_app, token).get_json()["user"]["username"] == "alice"


def test_outside_tokens_are_refused_when_no_issuer_is_configured(app, rsa_key):
    response = me(app, outside_token(rsa_key))
    assert response.status_code == 401
    assert response.get_json() == {
        "error": "invalid token: algorithm 'RS256' is not accepted"
    }


def test_jwks_file_with_es256_and_rs256_keys(settings, db, tmp_path, ec_key, rsa_key):
    def jwk(key, kid, alg):
        algorithm = jwt.algorithms.get_default_algorithms()[alg]
        return json.loads(algorithm.to_jwk(key.public_key())) | {
            "kid": kid,
            "alg": alg,
            "use": "sig",
        }

    jwks = tmp_path / "jwks.json"
    jwks.write_text(
        json.dumps(
            {"keys": [jwk(ec_key, "ec-1", "ES256"), jwk(rsa_key, "rsa-1", "RS256")]}
        )
    )
    app = create_app(
        replace_settings(
            settings, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_jwks_file=jwks
        )
    )

    es = outside_token(ec_key, "kim", "ES256", kid="ec-1")
    rs = outside_token(rsa_key, "lee", "RS256", kid="rsa-1")
    wrong_kid = outside_token(rsa_key, "lee", "RS256", kid="ec-1")
    no_kid = outside_token(rsa_key, "lee", "RS256")

    assert me(app, es).get_json()["user"]["username"] == "kim"
    assert me(app, rs).get_json()["user"]["username"] == "lee"
    assert me(app, wrong_kid).get_json() == {
        "error": "invalid token: no RS256 key ec-1 for issuer https://sso.example.test/"
    }
    assert me(app, no_kid).status_code == 200  # one RS256 key: no kid needed


# --- sign-in, refresh, sign-out ------------------------------------------------


def test_login_refresh_logout(app, db):
    add_user(app, "alice", PASSWORD)

    login = post(app, "/api/auth/login", username="alice", password=PASSWORD)
    body = login.get_json()
    access, refresh = body["access_token"], body["refresh_token"]
    refreshed = post(app, "/api/auth/refresh", refresh)
    new_access = refreshed.get_json()["access_token"]

    assert login.status_code == 200
    assert body["user"] == {"id": 1, "username": "alice", "role": "user"}
    assert me(app, access).get_json()["user"]["username"] == "alice"
    assert refreshed.status_code == 200
    assert me(app, new_access).status_code == 200
    assert post(app, "/api/auth/refresh", access).get_json() == {
        "error": "invalid token: not a refresh token"
    }

    logout = post(app, "/api/auth/logout", access)

    assert logout.get_json() == {"revoked": True}
    revoked = {"error": "this token was revoked: sign in again"}
    assert me(app, access).get_json() == revoked
    # The refresh token went with it, and so did every access token it made.
    assert me(app, new_access).get_json() == revoked
    assert post(app, "/api/auth/refresh", refresh).get_json() == revoked
    assert post(app, "/api/auth/logout", access).status_code == 401
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT user_id, expires_at > now() FROM revoked_tokens")
        ).all()
    assert [tuple(r) for r in rows] == [(1, True), (1, True)]


def test_logout_with_the_refresh_token_ends_the_sign_in(app, db):
    alice = add_user(app, "alice")
    issued = local_tokens(app, alice)
    other = local_tokens(app, alice)  # a second sign-in, e.g. another browser

    assert post(app, "/api/auth/logout", issued["refresh_token"]).status_code == 200

    assert me(app, issued["access_token"]).status_code == 401
    assert post(app, "/api/auth/refresh", issued["refresh_token"]).status_code == 401
    assert me(app, other["access_token"]).status_code == 200


def test_login_refusals_look_alike(app, db):
    add_user(app, "alice", PASSWORD)
    add_user(app, "carol", PASSWORD, disabled=True)
    add_user(app, "tokenonly")
    wrong = {"error": "wrong username or password"}

    bad_password = post(app, "/api/auth/login", username="alice", password="nope")
    unknown = post(app, "/api/auth/login", username="mallory", password=PASSWORD)
    no_password = post(app, "/api/auth/login", username="tokenonly", password="x")
    disabled = post(app, "/api/auth/login", username="carol", password=PASSWORD)
    malformed = post(app, "/api/auth/login", username="alice")

    for response in (bad_password, unknown, no_password):
        assert (response.status_code, response.get_json()) == (401, wrong)
    assert disabled.status_code == 403
    assert disabled.get_json() == {"error": "this account is disabled"}
    assert malformed.status_code == 400


def test_guessing_a_password_is_throttled_per_username(app, db):
    add_user(app, "alice", PASSWORD)
    add_user(app, "bob", PASSWORD)
    for _ in range(5):
        guess = post(app, "/api/auth/login", username="alice", password="guess")
        assert guess.status_code == 401

    # The sixth try waits, even with the right password: a guesser learns nothing.
    throttled = post(app, "/api/auth/login", username="Alice", password=PASSWORD)
    assert throttled.status_code == 429
    wait = int(throttled.headers["Retry-After"])
    assert 890 <= wait <= 900
    assert throttled.get_json() == {
        "error": f"too many failed sign-ins: try again in {wait} s"
    }
    # Another account from the same address is not locked with it.
    assert (
        post(app, "/api/auth/login", username="bob", password=PASSWORD).status_code
        == 200
    )


def test_a_good_sign_in_clears_earlier_failures(app, db):
    add_user(app, "alice", PASSWORD)
    for _ in range(4):
        post(app, "/api/auth/login", username="alice", password="typo")
    assert (
        post(app, "/api/auth/login", username="alice", password=PASSWORD).status_code
        == 200
    )
    for _ in range(4):
        post(app, "/api/auth/login", username="alice", password="typo")
    assert (
        post(app, "/api/auth/login", username="alice", password=PASSWORD).status_code
        == 200
    )


def test_password_hashes_are_salted_scrypt_and_verify(app, db):
    add_user(app, "alice", PASSWORD)
    add_user(app, "bob", PASSWORD)
    with unit_of_work(app.extensions["tally.db"]) as session:
        stored = [u.password_hash for u in session.query(User).order_by(User.id)]

    assert all(h.startswith("scrypt$n=131072,r=8,p=1$") for h in stored)
    assert PASSWORD not in stored[0] and stored[0] != stored[1]
    assert passwords.verify_password(PASSWORD, stored[0])
    assert not passwords.verify_password(PASSWORD + "!", stored[0])
    assert not passwords.verify_password(PASSWORD, "plain-text")
    assert not passwords.needs_rehash(stored[0])
    with pytest.raises(passwords.WeakPassword):
        passwords.hash_password("short")


def test_an_old_cost_is_upgraded_at_sign_in(app, db):
    alice = add_user(app, "alice")
    cheap = passwords.hash_password(PASSWORD, cost={"n": 2**14, "r": 8, "p": 1})
    with unit_of_work(app.extensions["tally.db"]) as session:
        session.get(User, alice).password_hash = cheap

    login = post(app, "/api/auth/login", username="alice", password=PASSWORD)

    assert login.status_code == 200
    with unit_of_work(app.extensions["tally.db"]) as session:
        upgraded = session.get(User, alice).password_hash
    assert upgraded.startswith("scrypt$n=131072,r=8,p=1$")
    assert passwords.verify_password(PASSWORD, upgraded)


# --- production settings -------------------------------------------------------

STRONG = "s" * 20 + "-production-secret-" + "t" * 20


@pytest.mark.parametrize(
    "secret", [None, "", "changeme", "secret", "x" * 31, "JWT-SECRET"]
)
def test_production_refuses_a_missing_or_weak_secret(secret):
    env = {"TALLY_ENV": "production"}
    if secret is not None:
        env["TALLY_JWT_SECRET"] = secret
    with pytest.raises(config.ConfigError, match="TALLY_JWT_SECRET is missing or weak"):
        config.load(env)


def test_create_app_refuses_a_weak_secret_however_settings_were_made(settings):
    weak = replace_settings(settings, env="production", jwt_secret="short")
    with pytest.raises(config.ConfigError, match="TALLY_JWT_SECRET"):
        create_app(weak)


def test_production_has_no_development_login(pg_url, db):
    settings = config.load(
        {"TALLY_ENV": "production", "TALLY_JWT_SECRET": STRONG, "DATABASE_URL": pg_url}
    )
    app = create_app(settings)
    client = app.test_client()

    response = client.post("/api/auth/dev-login", json={"username": "alice"})
    document = client.get("/api/openapi.json").get_json()

    assert response.status_code == 404
    assert "/api/auth/dev-login" not in {r.rule for r in app.url_map.iter_rules()}
    assert "/api/auth/dev-login" not in document["paths"]
    assert client.post("/api/auth/login", json={}).status_code == 400
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 0


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TALLY_JWT_ISSUER": ISSUER}, "need both TALLY_JWT_ISSUER and"),
        (
            {"TALLY_JWT_ISSUER": ISSUER, "TALLY_JWT_AUDIENCE": AUDIENCE},
            "set exactly one of TALLY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            {
                "TALLY_JWT_ISSUER": ISSUER,
                "TALLY_JWT_AUDIENCE": AUDIENCE,
                "TALLY_JWT_PUBLIC_KEY_FILE": "/a.pem",
                "TALLY_JWT_JWKS_FILE": "/b.json",
            },
            "set exactly one of TALLY_JWT_PUBLIC_KEY_FILE",
        ),
        ({"TALLY_CHATS_PER_MINUTE": "-1"}, "TALLY_CHATS_PER_MINUTE must be 0"),
        ({"TALLY_ACCESS_TOKEN_MINUTES": "0"}, "must be 1 or more"),
    ],
)
def test_outside_issuer_settings_are_checked(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load({"TALLY_ENV": "production", "TALLY_JWT_SECRET": STRONG, **env})


def test_an_unreadable_or_wrong_key_file_stops_start_up(settings, tmp_path, ec_key):
    missing = replace_settings(
        settings,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_public_key_file=tmp_path / "absent.pem",
    )
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem_public(ec.generate_private_key(ec.SECP384R1())))
    wrong_curve = replace_settings(missing, jwt_public_key_file=p384)
    not_jwks = tmp_path / "jwks.json"
    not_jwks.write_text('{"keys": []}')
    empty_jwks = replace_settings(
        missing, jwt_public_key_file=None, jwt_jwks_file=not_jwks
    )

    with pytest.raises(config.ConfigError, match="cannot read"):
        create_app(missing)
    with pytest.raises(config.ConfigError, match="RSA or P-256 public key"):
        create_app(wrong_curve)
    with pytest.raises(config.ConfigError, match="is not a JWKS"):
        create_app(empty_jwks)


def test_expiry_is_readable_for_the_socket(app):
    from app.auth.identity import token_expires_at

    alice = add_user(app, "alice")
    before = datetime.now(UTC).replace(microsecond=0)
    access = local_tokens(app, alice)["access_token"]

    expires = token_expires_at(access)

    assert expires.tzinfo is UTC
    assert before + timedelta(minutes=15) <= expires
    assert expires <= datetime.now(UTC) + timedelta(minutes=15)
    assert token_expires_at("not-a-jwt") is None
