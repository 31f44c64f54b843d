"""Helpers for page tests: a browser-like client (HTTPS, so Secure cookies travel) and sign-in."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from retroface.api.app import create_app
from retroface.context import AppContext

BASE = "https://testserver"


def page_client(app: AppContext) -> TestClient:
    return TestClient(create_app(app), base_url=BASE, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: TestClient, username: str, password: str) -> str:
    """Sign in through the login form; returns the session's CSRF token for later forms."""
    form = client.get("/ui/login")
    assert form.status_code == 200
    r = client.post(
        "/ui/login",
        data={"username": username, "password": password, "csrf": csrf_of(form.text)},
    )
    assert r.status_code == 303, r.text
    home = client.get("/ui/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)
