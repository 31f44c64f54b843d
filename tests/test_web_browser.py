"""The pages in a real browser (Debian's Chromium via Playwright), on the real app and models.

Screenshots of each step go to ``RETROFACE_SCREENSHOTS`` (default: the test's temporary folder);
the path is printed. No page may load anything from outside the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.browser import browser_on, live_server, shots_dir
from tests.conftest import add_team

from retroface.context import AppContext

PASSWORD = "correct horse battery staple"


@pytest.fixture
def sqlite_app(browser_app: Callable[..., AppContext]) -> AppContext:
    return browser_app()


def test_sign_in_and_keyboard(sqlite_app: AppContext, tmp_path: Path) -> None:
    add_team(sqlite_app, {"olive": "operator"}, PASSWORD)
    with live_server(sqlite_app) as base, browser_on(base, shots_dir(tmp_path)) as b:
        page = b.page()
        page.goto(base + "/ui/")  # not signed in: sent to the sign-in page
        assert page.url == base + "/ui/login?next=/ui/"
        b.sign_in(page, "olive", PASSWORD)
        assert "Welcome, olive" in page.text_content("main")
        # the skip link is the first thing the keyboard reaches
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        b.shot(page, "00-start")
        narrow = b.page(width=420, height=800)
        b.sign_in(narrow, "olive", PASSWORD)
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 420
