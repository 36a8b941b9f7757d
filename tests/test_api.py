"""The usage API: figures, filters, isolation between users, budgets, OpenAPI."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from app import create_app
from app.api.openapi import document
from app.auth import users
from app.auth.budgets import budget_status
from app.auth.limits import ChatRateLimiter, chat_refusal
from app.auth.tokens import issue_tokens
from app.db import unit_of_work
from app.usage.records import CallUsage
from tests.conftest import replace_settings
from workers.ledger import save_calls

# At genai-prices 0.2.3's list prices: claude-sonnet-4-5 $3 / $15 per million
# tokens in / out, so 100,000 in + 20,000 out = $0.30 + $0.30; claude-haiku-4-5
# $1 / $5, so the same call is $0.10 + $0.10.
SONNET, SONNET_COST = "claude-sonnet-4-5", Decimal("0.6")
HAIKU, HAIKU_COST = "claude-haiku-4-5", Decimal("0.2")
MAR_15 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def app(app):
    """The shared app, with the outbox relay its first request starts stopped after."""
    yield app
    app.extensions["tally.relay"].stop()


def add_user(app, username, role="user", **fields):
    with unit_of_work(app.extensions["tally.db"]) as session:
        user = users.create_user(session, username, role=role)
        for name, value in fields.items():
            setattr(user, name, value)
        return user.id


def token(app, user_id):
    with app.app_context():
        return issue_tokens(user_id)["access_token"]


def save(app, user_id, session_id, at, model=SONNET):
    call = CallUsage(
        message_id=f"msg_{session_id}_{at:%d%H%M}",
        user_id=user_id,
        session_id=session_id,
        model=model,
        occurred_at=at,
        input_tokens=100_000,
        output_tokens=20_000,
    )
    with unit_of_work(app.extensions["tally.db"]) as session:
        assert len(save_calls(session, [call])) == 1


def get(app, token_, path, **params):
    return app.test_client().get(
        path, headers={"Authorization": f"Bearer {token_}"}, query_string=params
    )


@pytest.fixture
def people(app, db):
    """alice and bob with one session each; an admin with none."""
    ids = {name: add_user(app, name) for name in ("alice", "bob")}
    ids["root"] = add_user(app, "root", role="admin")
    save(app, ids["alice"], "s-alice", MAR_15)
    save(app, ids["alice"], "s-alice", MAR_15 + timedelta(minutes=5), model=HAIKU)
    save(app, ids["bob"], "s-bob", MAR_15 + timedelta(days=1))
    return {name: token(app, user_id) for name, user_id in ids.items()}


# --- figures ------------------------------------------------------------------


def test_daily_models_and_sessions_of_the_signed_in_user(app, people):
    alice = people["alice"]

    daily = get(app, alice, "/api/usage/daily").get_json()
    model_rows = get(app, alice, "/api/usage/models").get_json()
    sessions = get(app, alice, "/api/usage/sessions").get_json()

    assert daily["filters"] == {
        "user": "alice",
        "since": None,
        "until": None,
        "tz": "UTC",
    }
    assert daily["days"] == [
        {
            "day": "2026-03-15",
            "username": "alice",
            "calls": 2,
            "unpriced_calls": 0,
            "input_tokens": 200_000,
            "output_tokens": 40_000,
            "cache_creation_tokens": 0,
            "cache_read_tokens": 0,
            "web_search_requests": 0,
            "cost": "0.80",
        }
    ]
    assert daily["totals"]["cost"] == "0.80"
    assert [(m["model"], m["calls"], m["cost"]) for m in model_rows["models"]] == [
        (HAIKU, 1, "0.20"),
        (SONNET, 1, "0.60"),
    ]
    assert [
        (s["session_id"], s["calls"], s["cost"], s["first_at"], s["last_at"])
        for s in sessions["sessions"]
    ] == [
        (
            "s-alice",
            2,
            "0.80",
            "2026-03-15T12:00:00+00:00",
            "2026-03-15T12:05:00+00:00",
        )
    ]


def test_session_detail_lists_its_calls(app, people):
    body = get(app, people["alice"], "/api/usage/sessions/s-alice").get_json()

    assert body["session"]["cost"] == "0.80"
    assert body["session"]["username"] == "alice"
    assert [
        (c["message_id"], c["model"], c["cost"], c["occurred_at"])
        for c in body["calls"]
    ] == [
        ("msg_s-alice_151200", SONNET, "0.60", "2026-03-15T12:00:00+00:00"),
        ("msg_s-alice_151205", HAIKU, "0.20", "2026-03-15T12:05:00+00:00"),
    ]


def test_days_follow_the_time_zone_asked_for(app, db):
    alice = add_user(app, "alice")
    late = datetime(2026, 3, 15, 23, 30, tzinfo=UTC)  # 00:30 on the 16th in Berlin
    save(app, alice, "s-1", late)
    save(app, alice, "s-1", datetime(2026, 3, 14, 22, 0, tzinfo=UTC))
    bearer = token(app, alice)

    utc = get(app, bearer, "/api/usage/daily").get_json()["days"]
    berlin = get(app, bearer, "/api/usage/daily", tz="Europe/Berlin").get_json()
    only_16th = get(
        app,
        bearer,
        "/api/usage/daily",
        tz="Europe/Berlin",
        since="2026-03-16",
        until="2026-03-16",
    ).get_json()
    detail = get(app, bearer, "/api/usage/sessions/s-1", tz="Europe/Berlin")

    assert [(d["day"], d["cost"]) for d in utc] == [
        ("2026-03-14", "0.60"),
        ("2026-03-15", "0.60"),
    ]
    assert [(d["day"], d["cost"]) for d in berlin["days"]] == [
        ("2026-03-14", "0.60"),
        ("2026-03-16", "0.60"),
    ]
    assert berlin["filters"]["tz"] == "Europe/Berlin"
    assert [(d["day"], d["calls"]) for d in only_16th["days"]] == [("2026-03-16", 1)]
    assert detail.get_json()["calls"][1]["occurred_at"] == "2026-03-16T00:30:00+01:00"


def test_since_and_until_are_whole_days(app, people):
    root = people["root"]

    first = get(app, root, "/api/usage/daily", until="2026-03-15").get_json()
    second = get(app, root, "/api/usage/sessions", since="2026-03-16").get_json()

    assert [(d["day"], d["username"]) for d in first["days"]] == [
        ("2026-03-15", "alice")
    ]
    assert [s["session_id"] for s in second["sessions"]] == ["s-bob"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"since": "2026-3-1"}, "since must be a day as YYYY-MM-DD, not '2026-3-1'"),
        (
            {"until": "2026-02-30"},
            "until must be a day as YYYY-MM-DD, not '2026-02-30'",
        ),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "since is after until"),
        ({"tz": "Mars/Olympus"}, "tz must be an IANA time zone, not 'Mars/Olympus'"),
        (
            {"tz": "../../etc/passwd"},
            "tz must be an IANA time zone, not '../../etc/passwd'",
        ),
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "\u00b2"}, "limit must be a whole number from 1 to 1000"),
    ],
)
def test_malformed_filters_are_a_400(app, people, params, message):
    response = get(app, people["alice"], "/api/usage/sessions", **params)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


# --- isolation ------------------------------------------------------------------


def api_get_paths(app, session_id):
    """Every GET route under /api, with ``session_id`` for the session parameter."""
    paths = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api") and "GET" in rule.methods:
            paths.append(rule.rule.replace("<session_id>", session_id))
    return paths


def test_no_api_route_shows_one_user_anothers_usage(app, people):
    alice = people["alice"]
    paths = api_get_paths(app, "s-bob")

    answers = {path: get(app, alice, path) for path in paths}
    as_bob = {path: get(app, alice, path, user="bob") for path in paths}

    assert "/api/usage/sessions/s-bob" in answers
    for path, response in answers.items():
        assert "bob" not in response.get_data(as_text=True), path
    assert answers["/api/usage/sessions/s-bob"].status_code == 404
    assert answers["/api/usage/sessions/s-bob"].get_json() == {
        "error": "no such session"
    }
    # Another user's session answers exactly as a session that does not exist.
    missing = get(app, alice, "/api/usage/sessions/no-such-session")
    assert missing.get_data() == answers["/api/usage/sessions/s-bob"].get_data()
    for path, response in as_bob.items():
        assert "s-bob" not in response.get_data(as_text=True), path
        if path.startswith("/api/usage"):
            assert response.status_code == 403, path


def test_a_user_may_name_themself(app, people):
    body = get(app, people["alice"], "/api/usage/daily", user="alice").get_json()
    assert [d["username"] for d in body["days"]] == ["alice"]


def test_an_admin_sees_everyone_or_one_user(app, people):
    root = people["root"]

    everyone = get(app, root, "/api/usage/daily").get_json()
    only_bob = get(app, root, "/api/usage/sessions", user="bob").get_json()
    bobs = get(app, root, "/api/usage/sessions/s-bob")
    nobody = get(app, root, "/api/usage/daily", user="nobody")
    wrong_owner = get(app, root, "/api/usage/sessions/s-bob", user="alice")

    assert everyone["filters"]["user"] is None
    assert [(d["day"], d["username"], d["cost"]) for d in everyone["days"]] == [
        ("2026-03-15", "alice", "0.80"),
        ("2026-03-16", "bob", "0.60"),
    ]
    assert everyone["totals"]["cost"] == "1.40"
    assert [s["session_id"] for s in only_bob["sessions"]] == ["s-bob"]
    assert bobs.status_code == 200
    assert bobs.get_json()["session"]["username"] == "bob"
    assert (nobody.status_code, nobody.get_json()) == (
        404,
        {"error": "no user 'nobody'"},
    )
    assert wrong_owner.status_code == 404


def test_every_api_route_needs_a_token(app, people):
    client = app.test_client()
    for path in api_get_paths(app, "s-alice"):
        if path != "/api/openapi.json":
            assert client.get(path).status_code == 401, path


# --- budgets and limits ---------------------------------------------------------


def test_budget_status_is_exact(app, db):
    alice = add_user(
        app, "alice", daily_budget=Decimal("1.00"), monthly_budget=Decimal("5")
    )
    bob = add_user(app, "bob")
    save(app, alice, "s-1", MAR_15)
    save(app, alice, "s-1", MAR_15 + timedelta(hours=1), model=HAIKU)
    save(app, alice, "s-2", datetime(2026, 3, 1, 0, 0, tzinfo=UTC))
    save(app, alice, "s-3", datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC))
    save(app, bob, "s-4", MAR_15)
    # 01:00 on the 16th in Karachi is still the 15th in UTC, and days are UTC.
    now = datetime(2026, 3, 16, 1, 0, tzinfo=ZoneInfo("Asia/Karachi"))

    with unit_of_work(app.extensions["tally.db"]) as session:
        alice_status = budget_status(session, alice, now)
        bob_status = budget_status(session, bob, now)

    assert alice_status == {
        "daily_limit": Decimal("1.00"),
        "daily_spent": Decimal("0.8"),
        "daily_left": Decimal("0.2"),
        "monthly_limit": Decimal("5"),
        "monthly_spent": Decimal("1.4"),
        "monthly_left": Decimal("3.6"),
        "over": False,
    }
    assert bob_status == {
        "daily_limit": None,
        "daily_spent": Decimal("0.6"),
        "daily_left": None,
        "monthly_limit": None,
        "monthly_spent": Decimal("0.6"),
        "monthly_left": None,
        "over": False,
    }


def test_a_budget_spent_to_the_cent_is_over(app, db):
    alice = add_user(app, "alice", monthly_budget=Decimal("1.2"))
    save(app, alice, "s-1", MAR_15 - timedelta(days=3))
    save(app, alice, "s-1", MAR_15)

    with unit_of_work(app.extensions["tally.db"]) as session:
        status = budget_status(session, alice, MAR_15)
        with app.test_request_context():
            refusal = chat_refusal(session, alice, MAR_15)

    assert status["monthly_left"] == Decimal(0)
    assert status["daily_left"] is None
    assert status["over"] is True
    assert refusal == (
        "over_budget",
        "monthly budget reached: $1.20 of $1.20 spent this month; "
        "it renews on the 1st (UTC)",
    )


def test_me_shows_the_budget_left_and_the_limits(app, db):
    alice = add_user(app, "alice", daily_budget=Decimal("0.5"))
    save(app, alice, "s-1", datetime.now(UTC))

    body = get(app, token(app, alice), "/api/me").get_json()

    assert body["user"] == {"id": alice, "username": "alice", "role": "user"}
    assert body["budget"] == {
        "daily_limit": "0.50",
        "daily_spent": "0.60",
        "daily_left": "0.00",
        "monthly_limit": None,
        "monthly_spent": "0.60",
        "monthly_left": None,
        "over": True,
    }
    assert body["limits"] == {"max_message_bytes": 64 * 1024, "chats_per_minute": 30}


def test_chat_rate_limit_is_a_sliding_minute():
    clock = iter([0.0, 1.0, 2.0, 3.0, 3.0, 59.9, 60.0, 60.0]).__next__
    limiter = ChatRateLimiter(3, clock=clock)

    allowed = [limiter.allow(7) for _ in range(4)]
    wait = limiter.retry_after(7)

    assert allowed == [True, True, True, False]
    assert wait == 57.0
    assert limiter.allow(7) is False  # at 59.9 the chat at 0.0 still counts
    assert limiter.allow(7) is True  # at 60.0 it has left the window
    assert limiter.allow(8) is True  # each user has a window of their own
    assert ChatRateLimiter(0).allow(7) is True  # 0 turns the limit off


def test_chat_refusal_counts_chats_per_user(settings, db):
    app = create_app(replace_settings(settings, chats_per_minute=2))
    alice = add_user(app, "alice")
    with unit_of_work(app.extensions["tally.db"]) as session, app.app_context():
        answers = [chat_refusal(session, alice) for _ in range(3)]

    assert answers[:2] == [None, None]
    code, message = answers[2]
    assert code == "rate_limited"
    assert re.fullmatch(r"at most 2 chats a minute: wait (59|60) s", message)


# --- OpenAPI ----------------------------------------------------------------------


def openapi_path(rule):
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_describes_every_api_route(app):
    doc = app.test_client().get("/api/openapi.json").get_json()
    routes = {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {
        (path, method) for path, item in doc["paths"].items() for method in item
    }

    assert doc["openapi"] == "3.1.0"
    assert routes == described
    assert ("/api/auth/dev-login", "post") in routes  # a development app


def test_openapi_references_resolve():
    doc = document(development=True)
    text = str(doc)
    names = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert names <= set(doc["components"]["schemas"])
    assert "/api/auth/dev-login" not in document(development=False)["paths"]
