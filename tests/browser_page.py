"""Test helper: the explorer served from this process, opened in Debian's chromium (Playwright).

One place for what every browser test needs: the browser binary and its flags (never a
downloaded browser), a server on a free port that closes with the test, and a page that
collects what went wrong in it (uncaught errors, console errors, HTTP errors) for
``no_errors``. Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WAIT = 60_000  # ms: a busy 2-core machine runs other tests too
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
# A module of browser tests: slow, needs chromium; Gradio's pandas / numpy deprecation noise filtered.
BROWSER_MODULE = [pytest.mark.slow, pytest.mark.browser, needs_chromium,
                  pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
                  pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@contextlib.contextmanager
def served(demo) -> Iterator[str]:
    """``demo`` launched on a free local port (the app's own launch settings); yields its URL."""
    from explorer.cli import launch_kwargs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(**launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def chromium():
    """Debian's chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, size: tuple[int, int] = (1440, 900), ready: str = "#tabs button[role=tab]"):
    """A new page of ``size`` at ``url``, once ``ready`` is there. ``page.errors`` collects
    uncaught errors, console errors and HTTP responses >= 400; ``page.size`` is ``size``."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.errors = []
    page.size = size
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("requestfinished", lambda r: (r.response() and r.response().status >= 400
                                          and page.errors.append(f"{r.response().status} {r.url} {r.post_data}")))
    page.goto(url)
    page.wait_for_selector(ready, timeout=WAIT)
    return page


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_{page.size[0]}x{page.size[1]}_{name}.png"))


def no_errors(page) -> None:
    assert not page.errors, page.errors
    assert page.locator(".error").count() == 0  # Gradio's red "Error" badges


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                           arg=[selector, text], timeout=WAIT)


def open_tab(page, tab_id: str) -> None:
    page.locator(f"#tabs button[role=tab][data-tab-id={tab_id}]").click()
    page.wait_for_selector(f"#tabs button[role=tab][data-tab-id={tab_id}][aria-selected=true]", timeout=WAIT)


def pick_example(page, name: str) -> None:
    """Choose an example in the Example dropdown and wait for its detections and pictures."""
    page.locator("#example input").click()
    page.locator("ul[role=listbox] li", has_text=name).first.click()
    wait_text(page, "#status", name)
    page.wait_for_selector("#att-image img", timeout=WAIT)
