"""A chat over the websocket, through Redis and a real worker, into PostgreSQL."""

from datetime import timedelta
from decimal import Decimal

import pytest
import websocket
from flask import Flask
from flask_jwt_extended import JWTManager, create_access_token
from sqlalchemy import text

from app.usage.records import CallUsage
from tests.conftest import ChatClient, login

# Expected figures per recorded stream: tokens as the API billed them and the cost
# at genai-prices 0.2.3's list prices (per million tokens, web searches per 1,000).
RECORDED = {
    # claude-sonnet-4: 22,397 x $3 + 637 x $15 + 2 searches x $10/1000
    "08_web_search_claude-sonnet-4.sse": dict(
        message_id="msg_01QmxBSdEbD9ZeBWDVgFDoQ5",
        model="claude-sonnet-4-20250514",
        input_tokens=22397,
        output_tokens=637,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        web_search_requests=2,
        cost=Decimal("0.096746"),
    ),
    # claude-sonnet-4-5: 20 x $3 + 5 x $15
    "01_text_claude-sonnet-4-5.sse": dict(
        message_id="msg_018E1hg8GoVTGEKQY3ovMcSJ",
        model="claude-sonnet-4-5-20250929",
        input_tokens=20,
        output_tokens=5,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        web_search_requests=0,
        cost=Decimal("0.000135"),
    ),
    # message_delta carries output only: input stays 377 from message_start
    "04_tool_use_claude-sonnet-4.sse": dict(
        message_id="msg_019Q1hrJbZG26Fb9BQhrkHEr",
        model="claude-sonnet-4-20250514",
        input_tokens=377,
        output_tokens=65,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        web_search_requests=0,
        cost=Decimal("0.002106"),
    ),
    # the 88 output tokens of message_start are a placeholder: 189 are billed
    "07_redacted_thinking_claude-sonnet-4-5.sse": dict(
        message_id="msg_018XZkwvj9asBiffg3fXt88s",
        model="claude-sonnet-4-5-20250929",
        input_tokens=92,
        output_tokens=189,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        web_search_requests=0,
        cost=Decimal("0.003111"),
    ),
    # compaction: both passes are billed (100 + 181 in, 83 + 8 out, 55,096 read),
    # though the SDK's final message only reports the last one;
    # claude-sonnet-4-6 at $3 / $15 / $0.30 cache read
    "03_cache_read_compaction_claude-sonnet-4-6.sse": dict(
        message_id="msg_011CduoCRono7pFKoTWpPAia",
        model="claude-sonnet-4-6",
        input_tokens=281,
        output_tokens=91,
        cache_creation_tokens=0,
        cache_read_tokens=55096,
        web_search_requests=0,
        cost=Decimal("0.0187368"),
    ),
    # claude-sonnet-5: 6 x $2 + 198 x $10 + 3,337 5-minute writes x $2.50
    # (the split said 3,068; the rest is billed at the 5-minute rate) + 6,289 x $0.20
    "02_cache_write_read_code_execution_claude-sonnet-5.chunks.jsonl": dict(
        message_id=None,
        model="claude-sonnet-5",
        input_tokens=6,
        output_tokens=198,
        cache_creation_tokens=3337,
        cache_read_tokens=6289,
        web_search_requests=0,
        cost=Decimal("0.0115923"),
    ),
}


def ledger(db):
    with db.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(text("SELECT * FROM usage_records ORDER BY id"))
        ]


def one_row(db, sql, **params):
    with db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(sql), params)]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("name", list(RECORDED))
def test_recorded_stream_is_counted_and_priced_once(name, worker, chat_client, db):
    expected = RECORDED[name]
    client = chat_client("alice")

    frames = client.chat(f"replay:{name}")
    end = frames[-1]
    saved = client.until("usage_saved")[-1]

    start = next(f for f in frames if f["type"] == "start")
    if expected["message_id"]:
        assert start["message_id"] == expected["message_id"]
    assert end["cost"] == str(expected["cost"])
    assert Decimal(saved["cost"]) == expected["cost"]
    assert saved["session"]["calls"] == 1
    assert Decimal(saved["session"]["cost"]) == expected["cost"]

    (record,) = ledger(db)
    for field in (
        "model",
        "input_tokens",
        "output_tokens",
        "cache_creation_tokens",
        "cache_read_tokens",
        "web_search_requests",
    ):
        assert record[field] == expected[field], field
    assert record["cost"] == expected["cost"]
    assert record["partial"] is False

    session_row = one_row(db, "SELECT * FROM session_usage")
    daily_row = one_row(db, "SELECT * FROM daily_usage")
    for row in (session_row, daily_row):
        assert row["calls"] == 1
        assert row["input_tokens"] == expected["input_tokens"]
        assert row["output_tokens"] == expected["output_tokens"]
        assert row["cache_read_tokens"] == expected["cache_read_tokens"]
        assert row["cost"] == expected["cost"]
    assert daily_row["day"] == record["occurred_at"].date()
    assert session_row["session_id"] == start["session_id"]


def test_token_updates_report_the_context_window(worker, chat_client, db):
    client = chat_client("alice")
    frames = client.chat("replay:08_web_search_claude-sonnet-4.sse")
    updates = [f for f in frames if f["type"] == "token_update"]

    first, last = updates[0], updates[-1]
    # message_start: the placeholder output (8) is not counted
    assert (first["input_tokens"], first["output_tokens"]) == (2068, 0)
    assert last["input_tokens"] == 22397
    assert last["output_tokens"] == 637
    assert last["total_tokens"] == 22397 + 637
    assert last["context_window"] == 200_000
    assert last["context_used"] == round((22397 + 637) / 200_000, 6)
    assert "".join(f["text"] for f in frames if f["type"] == "text").endswith(
        "pleasant day in San Francisco!"
    )


def test_history_continues_the_session_and_costs_add_up(worker, chat_client, db):
    client = chat_client("alice")
    first = client.chat("Hello there, simulator")[-1]
    session_id = next(f for f in client.frames if f["type"] == "start")["session_id"]
    client.until("usage_saved")
    second = client.chat("tokens:40 and again", session_id=session_id)
    saved = client.until("usage_saved")[-1]

    records = ledger(db)
    assert len(records) == 2
    assert {r["session_id"] for r in records} == {session_id}
    # the second call sent the whole history, so its input is larger
    assert records[1]["input_tokens"] > records[0]["input_tokens"]
    assert records[1]["output_tokens"] == 40
    total = records[0]["cost"] + records[1]["cost"]
    assert saved["session"]["calls"] == 2
    assert Decimal(saved["session"]["cost"]) == total
    assert Decimal(second[-1]["session_cost"]) == total
    assert Decimal(first["cost"]) == records[0]["cost"]


def test_the_same_call_replayed_twice_is_counted_once(worker, chat_client, db):
    client = chat_client("alice")
    client.chat("replay:01_text_claude-sonnet-4-5.sse")
    client.until("usage_saved")
    client.chat("replay:01_text_claude-sonnet-4-5.sse")
    client.until("usage_saved")

    assert len(ledger(db)) == 1
    row = one_row(db, "SELECT calls, cost FROM daily_usage")
    assert row == {"calls": 1, "cost": Decimal("0.000135")}


def test_cli_reports_show_the_saved_call(worker, chat_client, app, db):
    client = chat_client("alice")
    client.chat("replay:08_web_search_claude-sonnet-4.sse")
    client.until("usage_saved")
    runner = app.test_cli_runner()

    daily = runner.invoke(args=["usage", "daily", "--format", "csv"])
    sessions = runner.invoke(
        args=["usage", "sessions", "--user", "alice", "--format", "json"]
    )
    verify = runner.invoke(args=["usage", "verify"])

    day = ledger(db)[0]["occurred_at"].date().isoformat()
    assert daily.exit_code == 0, daily.output
    assert daily.output.splitlines() == [
        "day,username,calls,input_tokens,output_tokens,cache_creation_tokens,"
        "cache_read_tokens,total_tokens,cost,unpriced_calls",
        f"{day},alice,1,22397,637,0,0,23034,0.096746,0",
    ]
    assert sessions.exit_code == 0, sessions.output
    assert '"cost": "0.096746"' in sessions.output
    assert verify.exit_code == 0 and "ok" in verify.output


def close_code(client):
    opcode, data = client.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    return int.from_bytes(data[:2], "big")


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired", "wrong-key"])
def test_no_valid_token_means_no_claude_call(token, live_server, simulator, db):
    before = simulator.requests_served()
    tokens = {"expired": expired_token(live_server.app), "wrong-key": foreign_token()}
    client = ChatClient(live_server.ws_url)
    client.send(type="auth", token=tokens.get(token, token))
    client.send(type="chat", text="replay:01_text_claude-sonnet-4-5.sse")

    refusal = client.receive()
    assert refusal["type"] == "error" and refusal["code"] == "unauthorized"
    assert close_code(client) == 4401
    client.close()
    assert simulator.requests_served() == before
    assert ledger(db) == []


def expired_token(app):
    with app.app_context():
        user_id = login(app, "carol")["user"]["id"]
        return create_access_token(str(user_id), expires_delta=timedelta(seconds=-60))


def foreign_token():
    other = Flask("other")
    other.config["JWT_SECRET_KEY"] = "another-secret-" + "y" * 40
    JWTManager(other)
    with other.app_context():
        return create_access_token("1")


def test_header_token_and_bad_frames(live_server, simulator, db):
    token = login(live_server.app, "bob")["access_token"]
    client = ChatClient(live_server.ws_url, header=[f"Authorization: Bearer {token}"])
    assert client.receive()["type"] == "ready"

    client.ws.send_binary(b"\x00\x01")
    assert client.receive()["code"] == "bad_frame"
    client.ws.send("{not json")
    assert client.receive()["code"] == "bad_frame"
    client.send(type="chat", text="hi", session_id="someone-elses")
    assert client.receive() == {
        "type": "error",
        "code": "not_found",
        "message": "no such session",
    }
    frames = client.chat("still serving?")
    assert frames[-1]["type"] == "end"
    client.close()


def test_call_usage_round_trips_as_plain_json():
    payload = {
        "message_id": "msg_1",
        "user_id": 1,
        "session_id": "s",
        "model": "m",
        "occurred_at": "2026-01-25T04:08:00+00:00",
        "input_tokens": 5,
    }
    call = CallUsage.from_payload(payload)
    assert CallUsage.from_payload(call.to_payload()) == call
