"""Limits the chat socket enforces while it is open: budgets, rate, size, tokens."""

from datetime import timedelta
from decimal import Decimal

from flask_jwt_extended import create_access_token
from sqlalchemy import text

from app import create_app
from tests.conftest import ChatClient, LiveServer, login, replace_settings


def close_code(client):
    opcode, data = client.ws.recv_data(control_frame=True)
    assert opcode == 8  # close
    return int.from_bytes(data[:2], "big")


def test_a_chat_over_budget_is_refused_before_claude_is_called(
    worker, chat_client, simulator, db
):
    client = chat_client("gina")
    with db.begin() as conn:
        conn.execute(text("UPDATE users SET daily_budget = 0.05 WHERE username='gina'"))
    client.chat("replay:08_web_search_claude-sonnet-4.sse")  # costs $0.096746
    saved = client.until("usage_saved")[-1]
    assert saved["budget"] == {"daily_left": "0.00", "monthly_left": None}

    before = simulator.requests_served()
    client.send(type="chat", text="one more?", session_id=None)
    refusal = client.receive()

    assert refusal["code"] == "over_budget"
    assert refusal["message"].startswith(
        "daily budget reached: $0.096746 of $0.05 spent today"
    )
    assert simulator.requests_served() == before


def test_too_many_chats_a_minute_are_refused(settings, db, simulator):
    app = create_app(replace_settings(settings, chats_per_minute=2))
    server = LiveServer(app)
    try:
        client = ChatClient(server.ws_url, token=login(app, "hank")["access_token"])
        client.receive()
        client.chat("first")
        client.chat("second")
        before = simulator.requests_served()
        client.send(type="chat", text="third", session_id=None)
        refusal = client.receive()
        assert refusal["code"] == "rate_limited"
        assert refusal["message"].startswith("at most 2 chats a minute")
        assert simulator.requests_served() == before
        client.close()
    finally:
        server.stop()


def test_an_oversized_message_gets_a_clear_error_and_the_socket_stays(
    chat_client, settings, db
):
    client = chat_client("ivan")
    limit = settings.max_message_bytes
    client.send(type="chat", text="x" * (limit + 1), session_id=None)
    assert client.receive() == {
        "type": "error",
        "code": "too_large",
        "message": f"the message is {limit + 1:,} bytes; the limit is {limit:,}",
    }
    assert client.chat("still here")[-1]["type"] == "end"


def test_text_that_is_not_unicode_gets_a_clear_error_and_the_socket_stays(
    chat_client, db
):
    client = chat_client("ivan")
    # A lone surrogate is valid JSON but no text: it cannot be encoded.
    client.ws.send('{"type": "chat", "text": "hi \\ud800", "session_id": null}')
    assert client.receive() == {
        "type": "error",
        "code": "bad_frame",
        "message": "the text is not valid Unicode",
    }
    assert client.chat("still here")[-1]["type"] == "end"


def test_a_session_id_or_token_that_is_not_unicode_is_refused_cleanly(
    chat_client, live_server, db
):
    client = chat_client("ivy")
    client.ws.send('{"type": "chat", "text": "hi", "session_id": "\\ud800"}')
    assert client.receive() == {
        "type": "error",
        "code": "not_found",
        "message": "no such session",
    }
    # A refreshed token that is no text: refused like any bad token.
    client.ws.send('{"type": "auth", "token": "\\ud800"}')
    assert client.receive()["code"] == "unauthorized"
    assert close_code(client) == 4401

    first_frame = ChatClient(live_server.ws_url)
    first_frame.ws.send('{"type": "auth", "token": "\\ud800"}')
    assert first_frame.receive()["code"] == "unauthorized"
    assert close_code(first_frame) == 4401
    first_frame.close()


def test_the_socket_closes_when_the_token_expires(live_server, db):
    app = live_server.app
    user_id = login(app, "judy")["user"]["id"]
    with app.app_context():
        token = create_access_token(str(user_id), expires_delta=timedelta(seconds=2))
    client = ChatClient(live_server.ws_url, token=token)
    assert client.receive()["type"] == "ready"

    expired = client.receive()  # blocks until the server acts, at most 30 s
    assert expired == {
        "type": "error",
        "code": "unauthorized",
        "message": "the token has expired: sign in again",
    }
    assert close_code(client) == 4401
    client.close()


def test_the_socket_closes_when_the_user_signs_out_elsewhere(live_server, db):
    tokens = login(live_server.app, "kate")
    client = ChatClient(live_server.ws_url, token=tokens["access_token"])
    assert client.receive()["type"] == "ready"
    response = live_server.app.test_client().post(
        "/api/auth/logout",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 200

    refusal = client.receive()
    assert refusal["type"] == "error" and refusal["code"] == "unauthorized"
    assert close_code(client) == 4401
    client.close()


def test_the_socket_closes_when_the_account_is_disabled(live_server, db):
    client = ChatClient(live_server.ws_url, token=login(live_server.app, "liz")[
        "access_token"
    ])  # fmt: skip
    assert client.receive()["type"] == "ready"
    with db.begin() as conn:
        conn.execute(text("UPDATE users SET disabled = true WHERE username = 'liz'"))

    refusal = client.receive()  # within one look of the guard and one idle wait
    assert refusal == {
        "type": "error",
        "code": "unauthorized",
        "message": "this account does not exist or is disabled",
    }
    assert close_code(client) == 4401
    client.close()


def test_budget_left_is_exact(chat_client, db):
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (username, role, disabled, created_at, "
                "daily_budget, monthly_budget) VALUES ('leo', 'user', false, "
                "now(), 1.25, 30)"
            )
        )
    client = chat_client("leo")
    ready = client.frames[0]
    assert ready["budget"] == {"daily_left": "1.25", "monthly_left": "30.00"}
    assert Decimal(ready["budget"]["daily_left"]) == Decimal("1.25")
