"""The pages' gate, sessions and CSRF, through the real app and both stores.

The browser tests (tests/test_web_browser.py) drive the same pages in Chromium; these check the
rules a browser cannot easily show: every page × every role against the declared web matrix,
cookies' flags, CSRF refusals and revoked sessions.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from sqlalchemy import select
from tests.conftest import add_team
from tests.webutil import csrf_of, page_client, sign_in

from retroface.context import AppContext
from retroface.core.roles import Role
from retroface.storage.tables import AuditRecord
from retroface.web.access import WEB_MATRIX
from retroface.web.app import ROUTERS

PASSWORD = "correct horse battery staple"


def page_routes() -> set[tuple[str, str]]:
    """Every page the web routers serve (the API's routes are walked in tests/test_api.py)."""
    found = set()
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            for method in route.methods:
                found.add((method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)))
    return found


def test_every_page_is_declared() -> None:
    assert page_routes() == set(WEB_MATRIX)


def test_every_page_by_every_role(app: AppContext) -> None:
    """Allowed roles pass the gate; the others get a 403 page, audited as at the API."""
    team = {f"only-{r.value}": r.value for r in Role}
    add_team(app, team, PASSWORD)
    refused = []
    with page_client(app) as anon:
        clients = {}
        for name in team:
            c = page_client(app).__enter__()
            clients[name] = (c, sign_in(c, name, PASSWORD))
        # sign-out last: it revokes the session the later pages would need
        for method, path in sorted(page_routes(), key=lambda r: (r == ("POST", "/ui/logout"), r)):
            url = re.sub(r"\{[^}]+\}", "1", path)
            allowed = WEB_MATRIX[(method, path)]
            if allowed is None:
                continue
            r = anon.request(method, url)
            assert r.status_code == 303 and "/ui/login" in r.headers["location"], (method, path)
            for name, role in team.items():
                c, csrf = clients[name]
                r = c.request(method, url, data={"csrf": csrf} if method == "POST" else None)
                if Role(role) in allowed:
                    assert r.status_code not in (401, 403), (method, path, role, r.text[:300])
                else:
                    assert r.status_code == 403, (method, path, role, r.status_code)
                    assert 'data-code="forbidden"' in r.text
                    refused.append((name, f"{method} {path}"))
        for c, _ in clients.values():
            c.__exit__(None, None, None)
    with app.db.session() as s:
        rows = s.execute(
            select(AuditRecord.actor, AuditRecord.object_id).where(
                AuditRecord.action == "api.call.refused"
            )
        )
        logged = {(actor, route) for actor, route in rows}
    assert set(refused) <= logged


def test_session_cookie_flags_and_sign_out(app: AppContext) -> None:
    add_team(app, {"olive": "operator"}, PASSWORD)
    with page_client(app) as client:
        form = client.get("/ui/login")
        r = client.post(
            "/ui/login",
            data={"username": "olive", "password": PASSWORD, "csrf": csrf_of(form.text)},
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = r.headers["set-cookie"].lower()
        assert "rf_session=" in cookie
        for flag in ("httponly", "secure", "samesite=strict", "path=/ui"):
            assert flag in cookie, flag
        home = client.get("/ui/")
        assert home.status_code == 200 and "olive" in home.text
        assert "default-src 'self'" in home.headers["content-security-policy"]
        assert home.headers["cache-control"] == "no-store"
        token = client.cookies.get("rf_session")
        out = client.post("/ui/logout", data={"csrf": csrf_of(home.text)})
        assert out.status_code == 303
    # the session's token is revoked, not only forgotten by this browser
    with page_client(app) as replay:
        replay.cookies.set("rf_session", token or "")
        again = replay.get("/ui/")
        assert again.status_code == 303 and "/ui/login" in again.headers["location"]


def test_wrong_password_and_unsafe_next(app: AppContext) -> None:
    add_team(app, {"olive": "operator"}, PASSWORD)
    with page_client(app) as client:
        csrf = csrf_of(client.get("/ui/login").text)
        bad = client.post("/ui/login", data={"username": "olive", "password": "x", "csrf": csrf})
        assert bad.status_code == 401 and "wrong password" in bad.text
        assert "rf_session" not in client.cookies
        ok = client.post(
            "/ui/login",
            data={
                "username": "olive",
                "password": PASSWORD,
                "csrf": csrf,
                "next": "//evil.example/ui/",
            },
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"


def test_csrf_is_required(app: AppContext) -> None:
    add_team(app, {"olive": "operator"}, PASSWORD)
    with page_client(app) as client:
        # the login form itself: no token, no sign-in
        client.get("/ui/login")
        r = client.post("/ui/login", data={"username": "olive", "password": PASSWORD})
        assert r.status_code == 403 and "rf_session" not in client.cookies
        csrf = sign_in(client, "olive", PASSWORD)
        # a form posted without the token, with a wrong one, or from another site
        assert client.post("/ui/logout").status_code == 403
        assert client.post("/ui/logout", data={"csrf": "0" * 64}).status_code == 403
        foreign = client.post(
            "/ui/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert client.get("/ui/").status_code == 200  # still signed in
        # htmx sends the token as a header
        assert client.post("/ui/logout", headers={"X-CSRF-Token": csrf}).status_code == 303


def test_undeclared_page_fails_closed(app: AppContext) -> None:
    add_team(app, {"olive": "operator"}, PASSWORD)
    with page_client(app) as client:
        sign_in(client, "olive", PASSWORD)
        assert client.get("/ui/no-such-page").status_code == 404
        assert client.get("/").status_code == 307
        assert client.get("/ui/static/app.css").status_code == 200
