"""The usage page in a real headless Chromium, and the routes behind it:
cache savings from the JSON API and the Prometheus metrics.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app import create_app
from app.api.savings import call_saving
from app.auth import users
from app.auth.tokens import issue_tokens
from app.dashboard.metrics import figures
from app.db import unit_of_work
from app.models import DeadLetter, OutboxEntry, UsageRecord
from app.usage.records import CallUsage
from tests.browser import launch, screenshot, send, sign_in
from tests.conftest import replace_settings
from workers.ledger import save_calls

# The browser's zone: far from UTC, so a day in it is often not the UTC day.
TOKYO = ZoneInfo("Asia/Tokyo")
REPLAYED_MODEL = "claude-sonnet-4-20250514"
# At genai-prices 0.2.3: claude-sonnet-4-5 $3 input, $0.30 cache read per million
# tokens up to 200,000 input tokens a call, $6 and $0.60 above; claude-haiku-4-5
# $1 and $0.10.
SONNET, HAIKU = "claude-sonnet-4-5", "claude-haiku-4-5"
UNKNOWN = "claude-nonexistent-9"
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
HOSTILE_SESSION = "s-<img src=x onerror=alert(2)>"
MAR_15 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


# --- helpers --------------------------------------------------------------------


def add_user(app, username, role="user"):
    with unit_of_work(app.extensions["tally.db"]) as session:
        return users.create_user(session, username, role=role).id


def token(app, user_id):
    with app.app_context():
        return issue_tokens(user_id)["access_token"]


def get(app, bearer, path, **params):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return app.test_client().get(path, headers=headers, query_string=params)


def save(app, user_id, session_id, at, model=SONNET, message_id=None, **counts):
    call = CallUsage(
        message_id=message_id or f"msg_{session_id}_{at:%d%H%M%S}",
        user_id=user_id,
        session_id=session_id,
        model=model,
        occurred_at=at,
        **counts,
    )
    with unit_of_work(app.extensions["tally.db"]) as session:
        assert len(save_calls(session, [call])) == 1
    return call


def bars(page):
    """(day, cost) of every bar of the chart that is not a $0.00 day."""
    pairs = page.eval_on_selector_all(
        "#chart rect.bar",
        "nodes => nodes.map(n => [n.dataset.day, n.dataset.cost])",
    )
    return [tuple(pair) for pair in pairs if pair[1] != "0.00"]


def tokyo_time(moment, seconds=False):
    """A time as the page shows it in Tokyo: to the minute, or to the second."""
    return moment.astimezone(TOKYO).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    )


@pytest.fixture
def quiet_app(settings, db):
    """An app without the outbox relay: outbox entries stay where a test put them."""
    return create_app(settings)


@pytest.fixture
def page(live_server):
    with sync_playwright() as playwright:
        browser, page = launch(playwright, timezone_id=TOKYO.key)
        page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
        yield page
        browser.close()


# --- the page -------------------------------------------------------------------


def test_usage_page_charts_the_call_just_made(page, live_server, worker, db):
    today_before = datetime.now(TOKYO).date().isoformat()
    sign_in(page, live_server.url, "erin")
    send(page, "replay:08_web_search_claude-sonnet-4.sse")
    expect(page.locator(".save-mark").last).to_have_text("saved ✓", timeout=30_000)
    with db.connect() as conn:
        record = conn.execute(select(UsageRecord.__table__)).one()
    day = record.occurred_at.astimezone(TOKYO).date().isoformat()

    page.click("#usage-link")

    expect(page).to_have_url(f"{live_server.url}/usage")
    expect(page.locator("#tz")).to_have_value("Asia/Tokyo")
    bar = page.locator('#chart rect.bar[data-cost="0.096746"]')
    expect(bar).to_have_attribute("data-day", day)
    assert day in {today_before, datetime.now(TOKYO).date().isoformat()}
    assert bars(page) == [(day, "0.096746")]
    expect(bar.locator("title")).to_have_text(f"{day}: $0.096746 · 1 call")
    expect(
        page.locator(f'#models tbody tr[data-model="{REPLAYED_MODEL}"] td')
    ).to_have_text([REPLAYED_MODEL, "1", "22,397", "637", "0", "0", "2", "$0.096746"])
    expect(page.locator("#total-cost")).to_have_text("$0.096746")
    expect(page.locator("#total-calls")).to_have_text("1 call · 23,034 tokens")
    expect(page.locator("#total-saved")).to_have_text("$0.00")
    expect(page.locator("#budget-day")).to_have_text(
        "Today: $0.096746 spent · no limit"
    )
    expect(page.locator("#user-filter")).to_be_hidden()

    at = tokyo_time(record.occurred_at)
    session_row = page.locator(
        f'#sessions tr.session[data-session-id="{record.session_id}"]'
    )
    expect(session_row.locator("td")).to_have_text(
        [record.session_id, "erin", at, at, "1", "23,034", "$0.096746"]
    )
    session_row.click()
    expect(page.locator("tr.detail .calls tbody tr td")).to_have_text(
        [
            tokyo_time(record.occurred_at, seconds=True),
            REPLAYED_MODEL,
            "22,397",
            "637",
            "0",
            "0",
            "2",
            "$0.096746",
            "",
        ]
    )
    screenshot(page, "usage.png")


def test_an_admin_picks_whose_usage_to_see(page, live_server, db):
    app = live_server.app
    alice, bob = add_user(app, "alice"), add_user(app, "bob")
    # 03:00 UTC is noon in Tokyo: the same day in both zones.
    first = (datetime.now(UTC) - timedelta(days=2)).replace(
        hour=3, minute=0, second=0, microsecond=0
    )
    second = first + timedelta(days=1)
    save(app, alice, "s-alice", first, input_tokens=100_000, output_tokens=20_000)
    # 1,000 in + 500 out + 150,000 cache reads = $0.003 + $0.0075 + $0.045.
    save(
        app,
        bob,
        "s-bob",
        second,
        input_tokens=1_000,
        output_tokens=500,
        cache_read_tokens=150_000,
    )
    save(
        app,
        bob,
        HOSTILE_SESSION,
        second + timedelta(hours=1),
        model=HOSTILE_MODEL,
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=100,
    )
    sign_in(page, live_server.url, "root")
    made_admin = app.test_cli_runner().invoke(
        args=["users", "set-role", "root", "admin"]
    )
    assert made_admin.output == "root is now admin\n"

    page.click("#usage-link")

    expect(page.locator("#user")).to_have_text("root (admin)")
    expect(page.locator("#user-select option")).to_have_text(
        ["All users", "alice", "bob", "root"]
    )
    expect(page.locator("#total-cost")).to_have_text("$0.6555")
    assert bars(page) == [
        (first.date().isoformat(), "0.60"),
        (second.date().isoformat(), "0.0555"),
    ]
    expect(page.locator("#sessions tr.session td.who")).to_have_text(
        ["bob", "bob", "alice"]
    )

    page.select_option("#user-select", "bob")

    expect(page.locator("#total-cost")).to_have_text("$0.0555")
    expect(page.locator("#models tbody tr")).to_have_count(2)
    expect(page.locator(f'#models tr[data-model="{SONNET}"] td')).to_have_text(
        [SONNET, "1", "1,000", "500", "0", "150,000", "0", "$0.0555"]
    )
    expect(page.locator("#models tbody tr").first.locator("td")).to_have_text(
        [HOSTILE_MODEL, "1 (1 unpriced)", "10", "5", "0", "100", "0", "$0.00"]
    )
    expect(page.locator("#savings tbody tr td")).to_have_text(
        [HOSTILE_MODEL, "1 (1 unpriced)", "100", "$0.00"]
        + [SONNET, "1", "150,000", "$0.405"]
    )
    expect(page.locator("#total-saved")).to_have_text("$0.405")
    assert bars(page) == [(second.date().isoformat(), "0.0555")]
    expect(page.locator("#sessions tr.session")).to_have_count(2)
    page.locator("#sessions tr.session").first.click()
    expect(page.locator("tr.detail .calls tbody tr td").nth(1)).to_have_text(
        HOSTILE_MODEL
    )
    assert page.locator("#usage img, #usage script").count() == 0
    screenshot(page, "usage-admin.png")


def test_usage_page_without_a_token_links_to_sign_in(page, live_server):
    page.goto(f"{live_server.url}/usage")

    expect(page.locator("#signed-out")).to_be_visible()
    expect(page.locator("#sign-in-link")).to_have_attribute("href", "/")
    expect(page.locator("#usage")).to_be_hidden()


def test_chat_page_links_to_the_usage_page(quiet_app):
    html = quiet_app.test_client().get("/").get_data(as_text=True)
    assert '<a id="usage-link" href="/usage">Usage</a>' in html


# --- cache savings --------------------------------------------------------------


def test_savings_are_cache_reads_priced_as_input_less_their_price(quiet_app):
    alice = add_user(quiet_app, "alice")
    # Five calls of 200,000 cache reads: 1,000,000 tokens, $3.00 as input, $0.30 read.
    for minute in range(5):
        save(
            quiet_app,
            alice,
            "s-1",
            MAR_15 + timedelta(minutes=minute),
            output_tokens=10,
            cache_read_tokens=200_000,
        )
    save(quiet_app, alice, "s-2", MAR_15, model=HAIKU, cache_read_tokens=100_000)
    # A call without cache reads saves nothing and is not listed.
    save(quiet_app, alice, "s-3", MAR_15, model=HAIKU, input_tokens=9)

    body = get(quiet_app, token(quiet_app, alice), "/api/usage/savings").get_json()

    assert body == {
        "filters": {"user": "alice", "since": None, "until": None, "tz": "UTC"},
        "models": [
            {
                "model": HAIKU,
                "calls": 1,
                "unpriced_calls": 0,
                "cache_read_tokens": 100_000,
                "saved": "0.09",
            },
            {
                "model": SONNET,
                "calls": 5,
                "unpriced_calls": 0,
                "cache_read_tokens": 1_000_000,
                "saved": "2.70",
            },
        ],
        "totals": {
            "calls": 6,
            "unpriced_calls": 0,
            "cache_read_tokens": 1_100_000,
            "saved": "2.79",
        },
    }


def test_a_long_context_call_saves_at_the_long_context_rates():
    # Over 200,000 input tokens Sonnet 4.5 bills $6 input and $0.60 cache read.
    call = CallUsage(
        message_id="m",
        user_id=1,
        session_id="s",
        model=SONNET,
        occurred_at=MAR_15,
        input_tokens=1_000,
        cache_read_tokens=300_000,
    )
    assert call_saving(call) == Decimal("1.62")


def test_calls_each_side_of_the_long_context_start_save_at_their_own_rates(
    quiet_app,
):
    alice = add_user(quiet_app, "alice")
    reads = (100_000, 150_000, 200_000, 200_001, 300_000)
    calls = [
        save(quiet_app, alice, "s-1", MAR_15 + timedelta(minutes=i), **counts)
        for i, counts in enumerate({"cache_read_tokens": n} for n in reads)
    ]
    # A call over 200,000 input tokens in all is billed the long-context rates,
    # even when the input itself is small.
    calls.append(
        save(
            quiet_app,
            alice,
            "s-1",
            MAR_15 + timedelta(hours=1),
            input_tokens=150_000,
            cache_read_tokens=100_000,
        )
    )

    body = get(quiet_app, token(quiet_app, alice), "/api/usage/savings").get_json()

    # $2.70 a million at the base rates, $5.40 above 200,000 tokens a call.
    expected = (
        Decimal("0.27")
        + Decimal("0.405")
        + Decimal("0.54")
        + Decimal("1.0800054")
        + Decimal("1.62")
        + Decimal("0.54")
    )
    assert expected == sum(call_saving(call) for call in calls)
    assert body["totals"] == {
        "calls": 6,
        "unpriced_calls": 0,
        "cache_read_tokens": 1_050_001,
        "saved": "4.4550054",
    }
    assert Decimal(body["totals"]["saved"]) == expected


def test_unpriced_calls_save_nothing_and_are_counted(quiet_app):
    alice = add_user(quiet_app, "alice")
    save(quiet_app, alice, "s-1", MAR_15, model=UNKNOWN, cache_read_tokens=5_000)

    body = get(quiet_app, token(quiet_app, alice), "/api/usage/savings").get_json()

    assert body["models"] == [
        {
            "model": UNKNOWN,
            "calls": 1,
            "unpriced_calls": 1,
            "cache_read_tokens": 5_000,
            "saved": "0.00",
        }
    ]


def test_savings_follow_the_filters_and_the_user(quiet_app):
    alice, bob = add_user(quiet_app, "alice"), add_user(quiet_app, "bob")
    root = add_user(quiet_app, "root", role="admin")
    late = datetime(2026, 3, 15, 23, 30, tzinfo=UTC)  # the 16th in Berlin
    save(quiet_app, alice, "s-a", late, cache_read_tokens=100_000)
    save(quiet_app, bob, "s-b", MAR_15, model=HAIKU, cache_read_tokens=100_000)
    as_alice, as_root = token(quiet_app, alice), token(quiet_app, root)

    def saved(bearer, **params):
        response = get(quiet_app, bearer, "/api/usage/savings", **params)
        return response.status_code, response.get_json()["totals"].get("saved")

    assert saved(as_alice) == (200, "0.27")
    assert saved(as_alice, until="2026-03-15") == (200, "0.27")
    assert saved(as_alice, until="2026-03-15", tz="Europe/Berlin") == (200, "0.00")
    assert saved(as_root) == (200, "0.36")
    assert saved(as_root, user="bob") == (200, "0.09")
    forbidden = get(quiet_app, as_alice, "/api/usage/savings", user="bob")
    assert (forbidden.status_code, forbidden.get_json()) == (
        403,
        {"error": "only an admin may see another user's usage"},
    )
    assert get(quiet_app, None, "/api/usage/savings").status_code == 401


# --- metrics --------------------------------------------------------------------


def ledger_outbox_and_dead_letters(app, waiting_since):
    """Three saved calls (one partial, one unpriced), one outbox entry, two dead
    letters of which one was replayed."""
    alice = add_user(app, "alice")
    save(app, alice, "s-1", MAR_15, input_tokens=100_000, output_tokens=20_000)
    save(
        app,
        alice,
        "s-1",
        MAR_15,
        model=HAIKU,
        message_id="m-partial",
        input_tokens=100_000,
        output_tokens=20_000,
        partial=True,
    )
    save(app, alice, "s-1", MAR_15, model=UNKNOWN, message_id="m-unknown")
    with unit_of_work(app.extensions["tally.db"]) as session:
        session.add(
            OutboxEntry(message_id="m-wait", payload="{}", created_at=waiting_since)
        )
        for replayed in (None, MAR_15):
            payload = json.dumps({"message_id": "m-dead"})
            session.add(DeadLetter(payload=payload, error="x", replayed_at=replayed))


def test_metrics_read_the_ledger_outbox_and_dead_letters(quiet_app):
    started = datetime.now(UTC)
    ledger_outbox_and_dead_letters(quiet_app, started - timedelta(seconds=120))

    response = quiet_app.test_client().get("/metrics")  # no token: none is needed

    text = response.get_data(as_text=True)
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    values = {sample.name: sample.value for sample in samples}
    waited = values.pop("tally_oldest_unsaved_seconds")
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert values == {
        "tally_usage_records_total": 3.0,
        "tally_usage_records_partial_total": 1.0,
        "tally_usage_unpriced_total": 1.0,
        "tally_dead_letters": 1.0,
        "tally_outbox_depth": 1.0,
        "tally_cost_usd_total": 0.8,
    }
    assert 120 <= waited <= 120 + (datetime.now(UTC) - started).total_seconds()
    # Installation-wide figures only: no labels, no user, no session.
    assert all(sample.labels == {} for sample in samples)
    assert "alice" not in text and "s-1" not in text


def test_metric_figures_at_a_given_moment_are_exact(quiet_app):
    waiting_since = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
    ledger_outbox_and_dead_letters(quiet_app, waiting_since)

    with unit_of_work(quiet_app.extensions["tally.db"]) as session:
        values = figures(session, waiting_since + timedelta(seconds=90))

    assert values == {
        "tally_usage_records_total": 3,
        "tally_usage_records_partial_total": 1,
        "tally_usage_unpriced_total": 1,
        "tally_dead_letters": 1,
        "tally_outbox_depth": 1,
        "tally_oldest_unsaved_seconds": 90.0,
        "tally_cost_usd_total": 0.8,
    }


def test_metrics_speak_openmetrics_when_asked(quiet_app):
    response = quiet_app.test_client().get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    assert "tally_outbox_depth 0.0\n" in text
    assert text.endswith("# EOF\n")


def test_metrics_want_their_bearer_token_when_one_is_set(settings, db):
    app = create_app(replace_settings(settings, metrics_token="scrape-" + "s" * 30))
    client = app.test_client()

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.get_json() == {
            "error": "a bearer token (TALLY_METRICS_TOKEN) is required"
        }
    allowed = client.get(
        "/metrics", headers={"Authorization": "Bearer scrape-" + "s" * 30}
    )
    assert allowed.status_code == 200
    assert "tally_usage_records_total 0.0" in allowed.get_data(as_text=True)


def test_production_metrics_stay_closed_without_a_token(settings, db):
    production = replace_settings(settings, env="production", jwt_secret="p" * 48)
    response = create_app(production).test_client().get("/metrics")
    assert response.status_code == 403
    assert "TALLY_METRICS_TOKEN" in response.get_json()["error"]
