"""The pages as a person uses them, in a real headless Chromium."""

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser import launch, screenshot, send, sign_in


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
