"""Browser tests' plumbing: the real app served by uvicorn on loopback, driven by Debian's Chromium.

Never a downloaded browser: Playwright (PyPI) drives ``/usr/bin/chromium`` (``apt-get install
chromium``; ``scripts/setup-browser.sh`` does it). Every page is opened at ``localhost`` (which
browsers treat as secure, so the Secure session cookie works over HTTP), and every request the
page makes to any other host is aborted and recorded: :meth:`Browser.assert_local` fails a test
whose pages tried to load anything from outside the server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn

from retroface.api.app import create_app
from retroface.context import AppContext

CHROMIUM = Path(os.environ.get("RETROFACE_CHROMIUM", "/usr/bin/chromium"))


def require_chromium() -> None:
    """Skip on a developer machine without Chromium; in CI a missing browser is a failure."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} not found: apt-get install -y chromium (scripts/setup-browser.sh)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def shots_dir(tmp_path: Path) -> Path:
    """Where a browser test writes its screenshots: ``RETROFACE_SCREENSHOTS`` or its tmp dir."""
    return Path(os.environ.get("RETROFACE_SCREENSHOTS") or tmp_path / "screenshots")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(ctx: AppContext) -> Iterator[str]:
    """Serve the app on 127.0.0.1 in a thread; yields ``http://localhost:<port>``."""
    port = _free_port()
    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Browser:
    """One Chromium context at 1280×800 that refuses and records every external request."""

    def __init__(self, playwright: object, base: str, shots: Path) -> None:
        self.base = base
        self.shots = shots
        self.external: list[str] = []
        self.browser = playwright.chromium.launch(  # type: ignore[attr-defined]
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        self.contexts: list[object] = []

    def context(self, width: int = 1280, height: int = 800) -> object:
        ctx = self.browser.new_context(viewport={"width": width, "height": height})
        own = urlsplit(self.base).netloc

        def guard(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob") or parts.netloc == own:
                route.continue_()  # type: ignore[attr-defined]
            else:
                self.external.append(url)
                route.abort()  # type: ignore[attr-defined]

        ctx.route("**/*", guard)
        self.contexts.append(ctx)
        return ctx

    def page(self, width: int = 1280, height: int = 800) -> object:
        return self.context(width, height).new_page()  # type: ignore[attr-defined]

    def sign_in(self, page: object, username: str, password: str) -> None:
        page.goto(self.base + "/ui/login")  # type: ignore[attr-defined]
        page.get_by_label("Username").fill(username)  # type: ignore[attr-defined]
        page.get_by_label("Password").fill(password)  # type: ignore[attr-defined]
        page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
        page.wait_for_url(self.base + "/ui/**")  # type: ignore[attr-defined]

    def shot(self, page: object, name: str) -> Path:
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path

    def assert_local(self) -> None:
        assert not self.external, f"pages requested outside the server: {self.external}"

    def close(self) -> None:
        self.browser.close()


@contextmanager
def browser_on(base: str, shots: Path) -> Iterator[Browser]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    with sync_playwright() as p:
        b = Browser(p, base, shots)
        try:
            yield b
            b.assert_local()
        finally:
            b.close()
