"""Past chats: listed and reopened with the usage they had, and only by their owner."""

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from app.db import unit_of_work
from app.models import ChatSession, ChatTurn, User
from tests.conftest import login


def get(app, path, token):
    return app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})


def test_a_chat_reopens_with_its_turns_and_saved_usage(
    worker, chat_client, live_server
):
    app = live_server.app
    client = chat_client("alice")
    first = client.chat("replay:01_text_claude-sonnet-4-5.sse")[-1]
    client.until("usage_saved")
    chat_id = next(f for f in client.frames if f["type"] == "start")["session_id"]
    client.chat("tokens:5 and a second question", session_id=chat_id)
    client.until("usage_saved")
    token = login(app, "alice")["access_token"]

    (listed,) = get(app, "/api/chats", token).get_json()["chats"]
    shown = get(app, f"/api/chats/{chat_id}", token).get_json()

    assert listed["id"] == chat_id
    assert listed["title"] == "replay:01_text_claude-sonnet-4-5.sse"
    assert listed["calls"] == 2
    assert listed["cost"] == shown["chat"]["cost"]
    roles = [t["role"] for t in shown["turns"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    recorded, generated = shown["turns"][1], shown["turns"][3]
    assert recorded["message_id"] == first["message_id"]
    assert recorded["usage"]["cost"] == "0.000135"
    assert (
        recorded["usage"]["input_tokens"],
        recorded["usage"]["output_tokens"],
    ) == (first["usage"]["input_tokens"], first["usage"]["output_tokens"])
    assert generated["text"] == "Simulated reply. You said: and"
    assert generated["usage"]["output_tokens"] == 5


def test_another_users_chat_is_not_found(worker, chat_client, live_server):
    app = live_server.app
    client = chat_client("alice")
    client.chat("tokens:3 private")
    client.until("usage_saved")
    chat_id = next(f for f in client.frames if f["type"] == "start")["session_id"]
    mallory = login(app, "mallory")["access_token"]

    assert get(app, "/api/chats", mallory).get_json() == {"chats": []}
    response = get(app, f"/api/chats/{chat_id}", mallory)
    assert (response.status_code, response.get_json()) == (
        404,
        {"error": "no such chat"},
    )
    assert get(app, "/api/chats", "not-a-token").status_code == 401
    for limit in ("0", "%C2%B2"):  # "²" looks like a digit to str.isdigit
        assert get(app, f"/api/chats?limit={limit}", mallory).status_code == 400


def test_times_carry_their_zone_on_sqlite_too(sqlite_app):
    db = sqlite_app.extensions["tally.db"]
    started = datetime(2026, 3, 1, 21, 30, tzinfo=ZoneInfo("Europe/Paris"))
    token = login(sqlite_app, "sam")["access_token"]
    with unit_of_work(db) as session:
        sam = session.scalar(select(User.id).where(User.username == "sam"))
        session.add(ChatSession(id="c-1", user_id=sam, model="m", created_at=started))
        session.add(
            ChatTurn(session_id="c-1", role="user", content='"hi"', created_at=started)
        )

    (chat,) = get(sqlite_app, "/api/chats", token).get_json()["chats"]
    # 21:30 in Paris is 20:30 UTC, said so: a browser reads it right anywhere.
    assert (chat["started_at"], chat["last_at"]) == (
        "2026-03-01T20:30:00+00:00",
        "2026-03-01T20:30:00+00:00",
    )


def test_a_tab_continuing_a_chat_sends_what_another_tab_added(
    chat_client, live_server, db
):
    first_tab, second_tab = chat_client("alice"), chat_client("alice")
    first_tab.chat("tokens:3 one")
    chat_id = next(f for f in first_tab.frames if f["type"] == "start")["session_id"]
    second_tab.chat("tokens:4 two", session_id=chat_id)
    third = first_tab.chat("tokens:5 three", session_id=chat_id)[-1]

    with db.connect() as conn:
        turns = conn.execute(
            select(ChatTurn.content)
            .where(ChatTurn.session_id == chat_id)
            .order_by(ChatTurn.id)
        ).scalars()
        texts = [json.loads(content) for content in turns]
    assert len(texts) == 6
    # The simulator counts a token per 4 characters of every message it was sent:
    # the first tab's third call carried the second tab's exchange too.
    assert third["usage"]["input_tokens"] == math.ceil(sum(map(len, texts[:5])) / 4)


def test_a_tab_whose_reply_is_kept_after_another_tabs_still_sends_both(
    chat_client, live_server, db
):
    first_tab, second_tab = chat_client("alice"), chat_client("alice")
    first_tab.chat("tokens:3 one")
    chat_id = next(f for f in first_tab.frames if f["type"] == "start")["session_id"]
    # The first tab's slow reply is kept after the second tab's quick one.
    first_tab.send(type="chat", text="tokens:20 delay:50 slow", session_id=chat_id)
    first_tab.until("text")
    second_tab.chat("tokens:2 quick", session_id=chat_id)
    first_tab.until("end")
    third = first_tab.chat("tokens:1 three", session_id=chat_id)[-1]

    with db.connect() as conn:
        rows = conn.execute(
            select(ChatTurn.content)
            .where(ChatTurn.session_id == chat_id)
            .order_by(ChatTurn.id)
        ).scalars()
        texts = [json.loads(content) for content in rows]
    assert len(texts) == 8
    assert (texts[2], texts[4], texts[6]) == (
        "tokens:2 quick",
        "tokens:20 delay:50 slow",
        "tokens:1 three",
    )
    assert third["usage"]["input_tokens"] == math.ceil(sum(map(len, texts[:7])) / 4)
