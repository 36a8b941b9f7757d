"""When the database refuses a finished call's record, it waits on disk, then saves."""

from datetime import UTC, datetime

from sqlalchemy import text

from app.db import unit_of_work
from app.usage.records import CallUsage
from app.usage.spool import Spool


def outbox_rows(db):
    with db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()


def test_a_record_the_database_refuses_is_spooled_then_saved(
    worker, chat_client, live_server, db
):
    client = chat_client("mona")
    with db.begin() as conn:  # the outbox table is gone for a moment
        conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    try:
        frames = client.chat("replay:01_text_claude-sonnet-4-5.sse")
    finally:
        with db.begin() as conn:
            conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))

    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "database_unavailable"
    assert frames[-1]["type"] == "end"
    spool = live_server.app.extensions["tally.spool"]
    # The relay moves it to the outbox on its next tick; the worker saves it.
    saved = client.until("usage_saved")[-1]
    assert saved["cost"] == "0.000135"
    assert spool.depth() == 0
    assert outbox_rows(db) == 0
    health = live_server.app.test_client().get("/health").get_json()
    assert (health["spooled"], health["outbox_depth"]) == (0, 0)


def test_the_spool_survives_until_drained(app, db, tmp_path):
    spool = Spool(tmp_path)
    with unit_of_work(app.extensions["tally.db"]) as session:
        session.execute(
            text(
                "INSERT INTO users (username, role, disabled, created_at) "
                "VALUES ('ned', 'user', false, now())"
            )
        )
    call = CallUsage(
        message_id="msg_spooled",
        user_id=1,
        session_id="s",
        model="claude-sonnet-4-5",
        occurred_at=datetime.now(UTC),
        input_tokens=10,
    )
    spool.append(call)
    spool.append(call)
    assert Spool(tmp_path).depth() == 2  # on disk, not in memory

    moved = spool.drain(app.extensions["tally.db"])

    assert moved == 2 and spool.depth() == 0
    assert outbox_rows(db) == 2  # twice in the outbox, once in the ledger later
