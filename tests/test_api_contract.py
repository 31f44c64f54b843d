"""schemathesis against the OpenAPI document: no 5xx, no response outside the declared schema.

Runs as a caller holding every role (so requests get past the access gate and exercise the
handlers), on a small gallery and an approved case, with a bounded number of examples per
operation so CI stays quick.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import DATA_DIR

from retroface.api.app import create_app
from retroface.config import Settings
from retroface.context import AppContext
from retroface.gallery.enrol import items_from_paths

#: What the contract promises: no server error, and every response within the declared status
#: codes, content types and schemas.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
PASSWORD = "a long test password"
_home = Path(tempfile.mkdtemp(prefix="retroface-contract-"))
_ctx = AppContext(Settings(home=_home))
_ctx.users.ensure_admin("root", PASSWORD)
_root = _ctx.users.principal_for("root")
_ctx.users.add(_root, "everyone", "admin,operator,reviewer,authoriser,auditor", PASSWORD)
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
