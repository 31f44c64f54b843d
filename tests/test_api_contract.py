"""schemathesis against the OpenAPI document: no 5xx, no response outside the declared schema.

Runs as a caller holding every role (so requests get past the access gate and exercise the
handlers), on a small gallery and an approved case, with a bounded number of examples per
operation so CI stays quick.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import BACKENDS, DATA_DIR, database_on

from retroface.api.app import ERROR_CODES, create_app
from retroface.config import Settings
from retroface.context import AppContext
from retroface.gallery.enrol import items_from_paths
from retroface.vision.types import FaceEngine

#: What the contract promises: no server error, and every response within the declared status
#: codes, content types and schemas.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
PASSWORD = "a long test password"
ALL_ROLES = "admin,operator,reviewer,authoriser,auditor,oversight"
_home = Path(tempfile.mkdtemp(prefix="retroface-contract-"))
_ctx = AppContext(Settings(home=_home))
_ctx.users.ensure_admin("root", PASSWORD)
_root = _ctx.users.principal_for("root")
_ctx.users.add(_root, "everyone", ALL_ROLES, PASSWORD)
_TOKEN = _ctx.users.issue_token(_ctx.users.principal_for("everyone"), "everyone")
_app = create_app(_ctx)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _app)


@pytest.fixture(scope="module", autouse=True)
def _seed() -> None:
    _ctx.enroller().run(_root, list(items_from_paths([DATA_DIR / "people" / "joe_biden"])))
    opener = _ctx.users.add(_root, "opener", "operator", PASSWORD)
    _ctx.cases.open(opener, "C1", "robbery", "identify the suspect", "the only lead we have here")
    # need-to-know: the all-roles caller works on C1 as a member of its team, so the probe and
    # search routes reach their handlers rather than stopping at the team check
    _ctx.cases.team.add(opener, "C1", "everyone")
    boss = _ctx.users.authenticate_password("everyone", PASSWORD)
    _ctx.cases.authorise(boss, "C1", True, "proportionate")


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_contract(case: schemathesis.Case) -> None:
    if case.path == "/metrics" or case.path.endswith("/audit/export"):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {_TOKEN}"}
        response = case.call()
        assert response.status_code < 500
        return
    case.call_and_validate(headers={"Authorization": f"Bearer {_TOKEN}"}, checks=CHECKS)


# --------------------------------------------------------------------- negative data, both stores

#: Examples per operation and store: ~30 operations x 2 stores x 6 stays within a minute.
NEGATIVE_EXAMPLES = 6
#: The same contract, generating data that breaks it (wrong types, out of range, missing fields).
negative = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _app)
negative.config.generation.update(modes=[GenerationMode.NEGATIVE], max_examples=NEGATIVE_EXAMPLES)


@pytest.fixture(scope="module")
def store_apps(
    tmp_path_factory: pytest.TempPathFactory, engine: FaceEngine
) -> Iterator[Callable[[str], FastAPI]]:
    """Apps on each store, each with a token for a caller holding every role; built on first
    use and kept for the module (so a shuffled test order never rebuilds them)."""
    built: dict[str, FastAPI] = {}
    with ExitStack() as stack:

        def get(backend: str) -> FastAPI:
            if backend not in built:
                tmp = tmp_path_factory.mktemp(f"negative-{backend}")
                url = stack.enter_context(database_on(backend, tmp))
                ctx = AppContext(Settings(home=tmp / "home", database_url=url), engine=engine)
                stack.callback(ctx.close)
                ctx.users.ensure_admin("root", PASSWORD)
                root = ctx.users.principal_for("root")
                ctx.users.add(root, "everyone", ALL_ROLES, PASSWORD)
                everyone = ctx.users.authenticate_password("everyone", PASSWORD)
                app = create_app(ctx)
                app.state.test_token = ctx.users.issue_token(everyone, "everyone")
                built[backend] = app
            return built[backend]

        yield get


@pytest.mark.parametrize("backend", BACKENDS)
@negative.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_negative_data(
    store_apps: Callable[[str], FastAPI], backend: str, case: schemathesis.Case
) -> None:
    """Data outside the contract is refused with a documented error and a request id."""
    store_app = store_apps(backend)
    token = store_app.state.test_token
    response = case.call(app=store_app, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, response.text[:300]
    assert response.headers.get("x-request-id")  # schemathesis lower-cases names
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] in ERROR_CODES, error
