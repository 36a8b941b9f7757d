"""What a broken stream costs is still recorded, and the user is told what broke."""

import os
import signal
from decimal import Decimal

import pytest
from sqlalchemy import text

from app import create_app, stopping
from tests.conftest import ChatClient, LiveServer, login, wait_for


def ledger(db):
    with db.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(text("SELECT * FROM usage_records ORDER BY id"))
        ]


def input_estimate(prompt):
    # The simulator bills ceil(characters / 4) input tokens for a one-turn prompt.
    return -(-len(prompt) // 4)


def test_closing_the_tab_stops_claude_and_bills_what_was_used(
    worker, chat_client, simulator, db
):
    prompt = "tokens:3000 delay:5 tell me a long story"
    client = chat_client("alice")
    abandoned = simulator.streams_abandoned()
    client.send(type="chat", text=prompt, session_id=None)
    client.until("text")
    client.close()

    # The route noticed and closed the upstream stream long before its end.
    wait_for(
        lambda: simulator.streams_abandoned() == abandoned + 1,
        message="the simulator's stream to be closed by the route",
    )
    (record,) = wait_for(lambda: ledger(db), message="the partial record saved")
    assert record["partial"] is True
    assert record["input_tokens"] == input_estimate(prompt)
    # No message_delta arrived: the start's placeholder output is not billed.
    assert record["output_tokens"] == 0
    assert record["cost"] == Decimal(input_estimate(prompt)) * Decimal("0.000003")


def test_an_error_event_mid_reply_is_shown_and_the_input_still_billed(
    worker, chat_client, db
):
    prompt = "fault:error-midstream please"
    client = chat_client("alice")
    frames = client.chat(prompt)

    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "overloaded_error"
    assert "Overloaded" in error["message"]
    assert frames[-1]["partial"] is True
    client.until("usage_saved")
    (record,) = ledger(db)
    assert (record["partial"], record["input_tokens"], record["output_tokens"]) == (
        True,
        input_estimate(prompt),
        0,
    )


def test_a_dropped_connection_is_reported_and_recorded_partial(worker, chat_client, db):
    client = chat_client("alice")
    frames = client.chat("fault:drop now")

    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "incomplete"
    # The three deltas before the drop reach the page, ahead of the error.
    before_error = frames[: frames.index(error)]
    assert "".join(f["text"] for f in before_error if f["type"] == "text") == (
        "Simulated reply. You"
    )
    client.until("usage_saved")
    assert [r["partial"] for r in ledger(db)] == [True]


def test_a_refusal_before_the_stream_bills_nothing(chat_client, simulator, db):
    client = chat_client("alice")
    before = simulator.requests_served()
    client.send(type="chat", text="fault:529 hello", session_id=None)
    error = client.until("error")[-1]

    assert error["code"] == "overloaded_error"
    assert "529" in error["message"]
    # The SDK tried three times (max_retries=2), then the user was told.
    assert simulator.requests_served() == before + 3
    assert ledger(db) == []
    frames = client.chat("and now a normal message")
    assert frames[-1]["type"] == "end" and frames[-1]["partial"] is False


def test_a_dead_lettered_call_shows_as_such_until_replayed(settings, db):
    # No relay here: the record stays in the outbox as if the broker never took it.
    app = create_app(settings)
    server = LiveServer(app)
    try:
        token = login(app, "dora")["access_token"]
        client = ChatClient(server.ws_url, token=token)
        client.receive()
        end = client.chat("replay:01_text_claude-sonnet-4-5.sse")[-1]
        with db.begin() as conn:
            payload = conn.execute(text("SELECT payload FROM outbox")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO dead_letters (payload, error, created_at) "
                    "VALUES (:p, 'simulated: retries ran out', now())"
                ),
                {"p": payload},
            )

        status = client.until("usage_status")[-1]
        assert status == {
            "type": "usage_status",
            "message_id": end["message_id"],
            "status": "dead_letter",
        }
        replay = app.test_cli_runner().invoke(args=["usage", "replay"])
        assert "replayed 1 records (1 new)" in replay.output
        saved = client.until("usage_saved")[-1]
        assert saved["cost"] == "0.000135"
        client.close()
    finally:
        server.stop()


def test_a_server_told_to_stop_cuts_the_reply_and_records_it(
    worker, chat_client, live_server, simulator, db
):
    client = chat_client("alice")
    abandoned = simulator.streams_abandoned()
    client.send(type="chat", text="tokens:3000 delay:5 a long story", session_id=None)
    client.until("text")
    # What SIGTERM, SIGINT or SIGQUIT does in a served process (app.stopping).
    live_server.app.extensions["tally.stopping"].set()

    frames = client.until("end")
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "server_stopping"
    assert frames[-1]["partial"] is True
    # The socket closes as "going away", and Claude's stream was closed.
    opcode, data = client.ws.recv_data(control_frame=True)
    assert (opcode, int.from_bytes(data[:2], "big")) == (8, 1001)
    wait_for(lambda: simulator.streams_abandoned() == abandoned + 1)
    (record,) = wait_for(lambda: ledger(db), message="the cut call saved")
    assert record["partial"] is True
    assert record["message_id"] == frames[-1]["message_id"]


def test_stop_signals_set_the_event_then_do_what_they_did(settings, db):
    app = create_app(settings)
    saved = {signum: signal.getsignal(signum) for signum in stopping.SIGNALS}
    try:
        stopping.install(app)
        with pytest.raises(KeyboardInterrupt):  # SIGINT's usual handler ran too
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: False, timeout=5, message="the signal")
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert app.extensions["tally.stopping"].is_set()
