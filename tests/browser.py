"""Headless Chromium (Debian's package) driven by Playwright, for page tests."""

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

CHROMIUM = os.environ.get("TALLY_CHROMIUM", "/usr/bin/chromium")
# Without these flags Chromium tries to reach Google's hosts from a closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get(
        "TALLY_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-artifacts"
    )
)


def chromium_or_skip():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `apt-get install chromium` "
            "(scripts/test does it when run as root)"
        )
    return CHROMIUM


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def launch(playwright, **context):
    """A fresh headless Chromium and a page; ``context`` as for ``new_context``."""
    browser = playwright.chromium.launch(executable_path=chromium_or_skip(), args=FLAGS)
    page = browser.new_context(
        viewport={"width": 1100, "height": 900}, **context
    ).new_page()
    return browser, page


def sign_in(page, url, username):
    """Sign in on the chat page with the development login; wait for the chat."""
    page.goto(url)
    page.fill("#username", username)
    page.click("#login-button")
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#send")).to_be_enabled()


def send(page, text):
    page.fill("#message", text)
    page.click("#send")
