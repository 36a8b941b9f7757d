"""`flask usage replay` saves what it can and says what is still refused."""

import json
from decimal import Decimal

from sqlalchemy import text


def dead_letter(conn, message_id, user_id):
    payload = {
        "message_id": message_id,
        "user_id": user_id,
        "session_id": "s",
        "model": "claude-sonnet-4-5",
        "occurred_at": "2026-03-15T12:00:00Z",
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    conn.execute(
        text(
            "INSERT INTO dead_letters (payload, error, created_at) "
            "VALUES (:p, 'retries ran out', now())"
        ),
        {"p": json.dumps(payload)},
    )


def test_one_still_refused_letter_does_not_stop_the_others(app, db):
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, username, role, disabled, "
                "created_at) VALUES (1, 'pia', 'user', false, now())"
            )
        )
        dead_letter(conn, "msg_ok", 1)
        dead_letter(conn, "msg_no_user", 999)

    result = app.test_cli_runner().invoke(args=["usage", "replay"])

    assert result.exit_code == 0, result.output
    assert "replayed 1 records (1 new); 0 invalid records stay dead letters" in (
        result.output
    )
    assert "still refused: msg_no_user:" in result.output
    with db.connect() as conn:
        saved = conn.execute(text("SELECT message_id, cost FROM usage_records"))
        assert [tuple(r) for r in saved] == [("msg_ok", Decimal("0.0045"))]
        waiting = conn.execute(
            text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")
        ).scalar()
    assert waiting == 1
