"""The pages as a person uses them, in a real headless Chromium."""

import pytest
from playwright.sync_api import expect, sync_playwright

from app import config, create_app
from app.auth import users
from app.db import unit_of_work
from tests.browser import launch, screenshot, send, sign_in
from tests.conftest import LiveServer


@pytest.fixture
def page(live_server):
    with sync_playwright() as playwright:
        browser, page = launch(playwright)
        yield page
        browser.close()


def test_chat_streams_counts_and_marks_the_call_saved(page, live_server, worker, db):
    sign_in(page, live_server.url, "erin")
    # No ANTHROPIC_API_KEY in the tests: the page must say replies are simulated.
    expect(page.locator("#sim-notice")).to_be_visible()

    send(page, "replay:08_web_search_claude-sonnet-4.sse")

    reply = page.locator(".msg.assistant").last
    expect(reply).to_contain_text("pleasant day in San Francisco!")
    expect(page.locator(".save-mark").last).to_have_text("saved ✓", timeout=30_000)
    expect(page.locator("#session-cost")).to_have_text("Session: $0.096746")
    expect(page.locator("#context-label")).to_have_text(
        "23,034 / 200,000 tokens (11.5 %)"
    )
    assert page.locator("#context-bar").get_attribute("data-used") == "0.11517"
    expect(page.locator(".usage-line").last).to_contain_text("in 22,397 · out 637")
    screenshot(page, "chat.png")


def test_model_output_is_shown_as_text_never_run(page, live_server, worker, db):
    sign_in(page, live_server.url, "frank")
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))

    send(page, "<script>alert(1)</script><img src=x onerror=alert(2)>")

    reply = page.locator(".msg.assistant").last
    expect(reply).to_contain_text("<script>alert(1)</script>")
    assert page.locator(".msg script, .msg img").count() == 0


def test_production_signs_in_with_a_password(settings, db):
    production = config.load(
        {
            "TALLY_ENV": "production",
            "TALLY_JWT_SECRET": "p" * 48,
            "DATABASE_URL": settings.database_url,
            "CELERY_BROKER_URL": settings.broker_url,
            "TALLY_ANTHROPIC_BASE_URL": settings.anthropic_base_url,
            "TALLY_DATA_DIR": str(settings.data_dir),
        }
    )
    app = create_app(production)
    with unit_of_work(app.extensions["tally.db"]) as session:
        users.create_user(session, "olga", password="a long passphrase")
    server = LiveServer(app)
    try:
        with sync_playwright() as playwright:
            browser, page = launch(playwright)
            page.goto(server.url)
            page.fill("#username", "olga")
            page.fill("#password", "not it")
            page.click("#login-button")
            expect(page.locator("#error")).to_have_text("wrong username or password")

            page.fill("#password", "a long passphrase")
            page.click("#login-button")
            expect(page.locator("#send")).to_be_enabled()
            send(page, "hello from production")
            expect(page.locator(".usage-line").last).to_contain_text("$")
            browser.close()
    finally:
        server.stop()
