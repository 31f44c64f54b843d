"""Hostile input on every route, on SQLite and PostgreSQL: never a 5xx, always a documented error.

The cases come from tests/hostile_cases.py (route x parameter x hostile value, over 1,500 of
them). One app per store is built once for the module and seeded with a case, a probe, a search
and a gallery subject, so hostile values reach the handlers and the services behind them. Each
test runs one route's cases and reports every failing case at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import text
from tests import hostile_cases
from tests.conftest import DATA_DIR, database_on
from tests.hostile_cases import CASE, IMPORT_FOLDER, PENDING_CASE, HostileCase

from retroface.api.app import ERROR_CODES, create_app
from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.roles import Role
from retroface.gallery.enrol import items_from_paths
from retroface.search.service import ProbeProvenance
from retroface.vision.types import FaceEngine

PASSWORD = "a long test password"
IMAGE = DATA_DIR / "lfw" / "AJ_Cook" / "AJ_Cook_0001.jpg"
CASES = hostile_cases.cases()
ROUTES = sorted({c.route for c in CASES})


class Store:
    """A seeded app on one database, and a client for it."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token

    def send(self, case: HostileCase) -> Response:
        headers = {"Authorization": f"Bearer {self.token}"} if case.auth else {}
        if case.form is not None:
            files = {"file": (case.filename, IMAGE.read_bytes(), "image/jpeg")}
            return self.client.request(
                case.method, case.url, headers=headers, data=case.form, files=files
            )
        if case.json_body is not None:
            headers["Content-Type"] = "application/json"
            return self.client.request(
                case.method, case.url, headers=headers, content=case.json_body
            )
        return self.client.request(case.method, case.url, headers=headers)


def _seed(ctx: AppContext) -> str:
    ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    ctx.users.ensure_admin("root", PASSWORD)
    root = ctx.users.principal_for("root")
    ctx.users.add(root, "everyone", [r.value for r in Role], PASSWORD)
    ctx.users.add(root, "opener", "operator", PASSWORD)
    everyone = ctx.users.authenticate_password("everyone", PASSWORD)
    opener = ctx.users.authenticate_password("opener", PASSWORD)
    ctx.enroller().run(root, list(items_from_paths([IMAGE.parent])))
    for ref in (CASE, PENDING_CASE):
        ctx.cases.open(opener, ref, "robbery", "identify the suspect", "the CCTV still is the lead")
    ctx.cases.authorise(everyone, CASE, True, "necessary and proportionate")
    probe = ctx.searches.add_probe(
        opener, CASE, IMAGE.read_bytes(), "probe.jpg", ProbeProvenance("CCTV", "exhibit AB/1")
    )
    ctx.searches.search(opener, CASE, probe.probe_id, None, 5)
    return ctx.users.issue_token(everyone, "everyone")


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, engine: FaceEngine
) -> Iterator[dict[str, Any]]:
    """Stores built on first use (one per backend) and closed at the end of the module."""
    built: dict[str, Any] = {}
    with ExitStack() as stack:

        def get(backend: str) -> Store:
            if backend not in built:
                tmp = tmp_path_factory.mktemp(f"hostile-{backend}")
                url = stack.enter_context(database_on(backend, tmp))
                (tmp / "import" / IMPORT_FOLDER).mkdir(parents=True)
                settings = Settings(home=tmp / "home", database_url=url, import_dir=tmp / "import")
                ctx = AppContext(settings, engine=engine)
                stack.callback(ctx.close)
                token = _seed(ctx)
                client = stack.enter_context(
                    TestClient(create_app(ctx), raise_server_exceptions=False)
                )
                built[backend] = Store(client, token)
            store: Store = built[backend]
            return store

        yield {"get": get}


def _problem(case: HostileCase, response: Response) -> str | None:
    """What is wrong with the answer to a hostile request, or None."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:200]}"
    if not response.headers.get("X-Request-ID"):
        return f"{response.status_code} without X-Request-ID"
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} body is not JSON: {response.text[:100]}"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(error, dict)
        or set(error) != {"code", "message"}
        or not isinstance(error["message"], str)
    ):
        return f"{response.status_code} body not of the error shape: {response.text[:200]}"
    if error["code"] not in ERROR_CODES:
        return f"{response.status_code} undocumented code {error['code']!r}"
    return None


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 300
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_error_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    documented = set(re.findall(r"`(?:\d{3} )?([a-z_]+)`", doc))
    assert set(ERROR_CODES) <= documented, set(ERROR_CODES) - documented


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("route", ROUTES)
def test_hostile_input(stores: dict[str, Any], backend: str, route: str) -> None:
    store: Store = stores["get"](backend)
    problems = []
    for case in (c for c in CASES if c.route == route):
        problem = _problem(case, store.send(case))
        if problem:
            problems.append(f"{case.id}: {problem}")
    assert not problems, f"{len(problems)} failing:\n" + "\n".join(problems)


def test_a_server_fault_carries_the_request_id(app: AppContext) -> None:
    """A real fault (the cases table gone from under the server) is a 500 of the documented
    shape with the request id, given or generated; before, a 500 had no X-Request-ID."""
    app.users.ensure_admin("root", PASSWORD)
    root = app.users.authenticate_password("root", PASSWORD)
    token = app.users.issue_token(root, "root")
    with app.db.engine.begin() as conn:
        conn.execute(text("DROP TABLE cases CASCADE" if _is_pg(app) else "DROP TABLE cases"))
    with TestClient(create_app(app), raise_server_exceptions=False) as client:
        auth = {"Authorization": f"Bearer {token}"}
        given = client.get("/api/v1/cases", headers={**auth, "X-Request-ID": "fault-1"})
        made = client.get("/api/v1/cases", headers={**auth, "X-Request-ID": "<script>"})
    assert given.status_code == made.status_code == 500
    assert given.headers["X-Request-ID"] == "fault-1"
    assert made.headers["X-Request-ID"] not in ("", "<script>")
    assert given.json()["error"]["code"] == "internal_error"
    assert "fault-1" in given.json()["error"]["message"]


def _is_pg(app: AppContext) -> bool:
    return app.db.engine.dialect.name == "postgresql"
