"""The pages as a person uses them, in a real headless Chromium."""

import time

import jwt
import pytest
from playwright.sync_api import expect, sync_playwright

from app import config, create_app
from app.auth import users
from app.db import unit_of_work
from tests.browser import launch, screenshot, send, sign_in
from tests.conftest import LiveServer, replace_settings, wait_for

TOKEN = "sessionStorage.getItem('tally.token')"


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


@pytest.mark.slow
def test_an_open_chat_outlives_its_access_token(settings, db, celery_sender, worker):
    # One-minute access tokens: the page renews at 48 s and tells the socket.
    app = create_app(
        replace_settings(settings, access_token_minutes=1), celery=celery_sender
    )
    server = LiveServer(app)
    try:
        with sync_playwright() as playwright:
            browser, page = launch(playwright)
            sign_in(page, server.url, "tessa")
            first = page.evaluate(TOKEN)
            expiry = jwt.decode(first, options={"verify_signature": False})["exp"]

            page.wait_for_function(f"t => {TOKEN} !== t", arg=first, timeout=70_000)
            # Past the first token's expiry the server closes a socket that was
            # not told of a new one; this one stays, and chats.
            wait_for(lambda: time.time() > expiry + 2, timeout=75)
            send(page, "still here")
            expect(page.locator(".msg.assistant").last).to_contain_text(
                "Simulated reply. You said: still here."
            )
            expect(page.locator(".save-mark").last).to_have_text(
                "saved ✓", timeout=30_000
            )
            expect(page.locator("#login-form")).to_be_hidden()
            browser.close()
    finally:
        server.stop()


def test_signing_out_revokes_the_token_on_the_server(page, live_server):
    sign_in(page, live_server.url, "uma")
    token = page.evaluate(TOKEN)
    client = live_server.app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=headers).status_code == 200

    page.click("#sign-out")
    expect(page.locator("#login-form")).to_be_visible()
    wait_for(
        lambda: client.get("/api/me", headers=headers).status_code == 401,
        message="the signed-out token refused",
    )
    assert page.evaluate(TOKEN) is None


def test_a_reload_reopens_the_conversation_and_it_goes_on(page, live_server, worker):
    sign_in(page, live_server.url, "vera")
    send(page, "replay:01_text_claude-sonnet-4-5.sse")
    expect(page.locator(".save-mark").last).to_have_text("saved ✓", timeout=30_000)
    reply = page.locator(".msg.assistant").last.locator(".body").inner_text()
    line = page.locator(".usage-line").last.inner_text()

    page.reload()
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator(".msg.user")).to_have_text(
        ["replay:01_text_claude-sonnet-4-5.sse"]
    )
    expect(page.locator(".msg.assistant .body")).to_have_text([reply])
    expect(page.locator(".usage-line")).to_have_text([line])
    expect(page.locator("#session-cost")).to_have_text("Session: $0.000135")

    # The next message continues the same conversation: one chat, two calls.
    send(page, "tokens:4 go on")
    expect(page.locator(".save-mark").last).to_have_text("saved ✓", timeout=30_000)
    expect(page.locator(".msg.user")).to_have_count(2)
    options = page.locator("#history option")
    expect(options).to_have_count(2)  # the placeholder and this one chat
    expect(options.nth(1)).to_contain_text("replay:01_text_claude-sonnet-4-5.sse")

    # A new chat empties the page; the list brings the old one back.
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    page.select_option("#history", index=1)
    expect(page.locator(".msg.user")).to_have_count(2)
    expect(page.locator(".save-mark")).to_have_text(["saved ✓", "saved ✓"])


def test_a_message_over_the_limit_is_stopped_in_the_page(page, live_server):
    sign_in(page, live_server.url, "walt")
    limit = live_server.app.extensions["tally.settings"].max_message_bytes
    send(page, "é" * (limit // 2 + 1))  # two bytes each in UTF-8

    expect(page.locator("#error")).to_have_text(
        f"The message is {limit + 2:,} bytes; the limit is {limit:,}."
    )
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#send")).to_be_enabled()  # the socket is still open
