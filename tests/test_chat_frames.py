"""A reply's text deltas reach the page whole, in order, and in fewer frames."""

import time

from sqlalchemy import text

from app import create_app
from tests.conftest import ChatClient, LiveServer, login, replace_settings

INTERVAL = 0.030  # TALLY_TEXT_FRAME_MS's default


def texts(frames):
    return [f["text"] for f in frames if f["type"] == "text"]


def stored_reply(db, message_id):
    with db.connect() as conn:
        content = conn.scalar(
            text("SELECT content FROM chat_turns WHERE message_id = :m"),
            {"m": message_id},
        )
    return content


def test_a_paced_reply_arrives_whole_in_a_frame_per_interval(chat_client, worker, db):
    client = chat_client("alice")
    client.send(type="chat", text="tokens:120 delay:2 paced", session_id=None)
    arrivals = []
    while True:
        frame = client.receive()
        if frame["type"] == "text":
            arrivals.append(time.monotonic())
        if frame["type"] == "end":
            break
    frames = client.frames

    parts = texts(frames)
    # Every word, in order, exactly as the conversation history keeps it.
    reply = "".join(parts)
    assert f'"{reply}"' == stored_reply(db, frames[-1]["message_id"])
    assert reply.startswith("Simulated reply. You said: paced.")
    # 120 deltas 2 ms apart: it streamed, in far fewer frames than deltas. A text
    # frame waits at least one interval after the last, or after being held.
    streamed = arrivals[-1] - arrivals[0]
    assert 3 <= len(parts) <= 2 * streamed / INTERVAL + 2, (len(parts), streamed)
    assert client.until("usage_saved")[-1]["session"]["output_tokens"] == 120


def test_text_held_when_the_stream_goes_quiet_is_sent_at_once(
    chat_client, worker, simulator
):
    client = chat_client("alice")
    client.send(type="chat", text="tokens:8 stall:5000 wait", session_id=None)
    # The first three deltas arrive together: one is sent, two are held. Claude
    # then pauses; the held text must not wait for the pause to end.
    while "".join(texts(client.frames)) != "Simulated reply. You":
        assert client.receive()["type"] in ("start", "token_update", "text")
    assert simulator.streams_stalled() == 1
    end = client.until("end")[-1]
    assert end["usage"]["output_tokens"] == 8
    assert "".join(texts(client.frames)) == (
        "Simulated reply. You said: wait. The simulator keeps"
    )
    assert client.until("usage_saved")[-1]["session"]["output_tokens"] == 8


def test_with_no_interval_each_delta_is_its_own_frame(settings, db):
    # No relay: the record stays in the outbox, which the next test empties.
    app = create_app(replace_settings(settings, text_frame_ms=0))
    server = LiveServer(app)
    try:
        client = ChatClient(server.ws_url, token=login(app)["access_token"])
        client.receive()
        frames = client.chat("fault:drop now")
        client.close()
    finally:
        server.stop()
    assert texts(frames) == ["Simulated", " reply.", " You"]
    assert next(f for f in frames if f["type"] == "error")["code"] == "incomplete"
