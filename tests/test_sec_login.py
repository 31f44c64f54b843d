"""Security findings on login and tokens (#11 findings 2 and 4, and the 12-space password).

Login: no database transaction is open while argon2 runs, so parallel bad logins cannot make
SQLite answer "database is locked"; accounts lock after repeated failures (even the right
password is refused until the lockout ends) and clients are throttled; a flood of failures
leaves a bounded number of audit records. Tokens: an admin can no longer mint tokens for other
people (only for service accounts), and every audit record names the credential used.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import ADMIN, Clock, _database_url

from retroface.api.app import create_app
from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.governance.users import (
    LOCKOUT_FAILURES,
    AuthenticationError,
    LoginThrottledError,
)
from retroface.storage.tables import AuditRecord
from retroface.vision.types import FaceEngine

PASSWORD = "a long test password"


@pytest.fixture
def sqlite_app(tmp_path: Path, engine: FaceEngine, clock: Clock) -> Iterator[AppContext]:
    """A file-based SQLite home with the real services (and argon2's default parameters)."""
    url = next(_database_url("sqlite", tmp_path))
    ctx = AppContext(Settings(home=tmp_path / "home", database_url=url), engine=engine, clock=clock)
    yield ctx
    ctx.close()


def records(app: AppContext, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def _in_threads(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for i < n in n threads at once; the outcome or the exception of each."""

    def attempt(i: int) -> Any:
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(attempt, range(n)))


# ------------------------------------------------------------------------ finding 2: login DoS


class _LockProbingHasher(PasswordHasher):
    """Real argon2 that, while it verifies, checks that SQLite's write lock is free."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.db_path = db_path
        self.locked: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        probe = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            self.locked.append(str(exc))
        finally:
            probe.close()
        return super().verify(hash, password)


def test_no_write_lock_is_held_while_argon2_runs(sqlite_app: AppContext, tmp_path: Path) -> None:
    sqlite_app.users.ensure_admin("admin", PASSWORD)
    probing = _LockProbingHasher(tmp_path / "retroface.db")
    sqlite_app.users.hasher = probing
    sqlite_app.users.authenticate_password("admin", PASSWORD)
    with pytest.raises(AuthenticationError):
        sqlite_app.users.authenticate_password("admin", "a wrong long password")
    with pytest.raises(AuthenticationError):
        sqlite_app.users.authenticate_password("nobody", "a wrong long password")
    assert probing.locked == []


def test_parallel_bad_logins_never_lock_sqlite(sqlite_app: AppContext) -> None:
    """20 threads of bad logins (real argon2 parameters, one account each): all refused, as
    wrong passwords or lockouts, never "database is locked"."""
    users = sqlite_app.users
    users.ensure_admin("admin", PASSWORD)
    for i in range(20):
        users.add(ADMIN, f"user{i}", "operator", PASSWORD)

    def bad_logins(i: int) -> list[str]:
        outcomes = []
        for _ in range(2):
            try:
                users.authenticate_password(f"user{i}", "not the password at all")
            except AuthenticationError as exc:
                outcomes.append(exc.code)
        return outcomes

    results = _in_threads(20, bad_logins)
    assert all(isinstance(r, list) for r in results), [
        r for r in results if not isinstance(r, list)
    ]
    assert Counter(code for r in results for code in r) == {"unauthenticated": 40}
    # the right password still works afterwards, as the account is not locked (2 < 5 failures)
    assert users.authenticate_password("user0", PASSWORD).username == "user0"


def test_parallel_bad_logins_through_the_api_never_answer_500(sqlite_app: AppContext) -> None:
    sqlite_app.users.ensure_admin("admin", PASSWORD)
    with TestClient(create_app(sqlite_app)) as client:

        def bad_login(i: int) -> int:
            body = {"username": f"admin{i % 3}", "password": "not the password at all"}
            return client.post("/api/v1/auth/token", json=body).status_code

        statuses = Counter(_in_threads(20, bad_login))
        # the client (all threads share its address) is throttled after 10 attempts
        assert set(statuses) <= {401, 429} and statuses[429] >= 10, statuses
        answer = client.post(
            "/api/v1/auth/token", json={"username": "admin", "password": "not the password"}
        )
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "too_many_attempts"
        assert "try again after" in answer.json()["error"]["message"]
        assert int(answer.headers["Retry-After"]) > 0
    # one record of the throttling episode, however many attempts it refused
    assert len(records(sqlite_app, "login.throttled")) == 1


def test_lockout_refuses_even_the_right_password(app: AppContext, clock: Clock) -> None:
    """100 wrong passwords, then the right one: refused, saying when to try again; the 101
    attempts leave a handful of audit records, and the lockout ends on time."""
    users = app.users
    users.ensure_admin("admin", PASSWORD)
    users.add(ADMIN, "olive", "operator", PASSWORD)
    for _ in range(100):
        with pytest.raises(AuthenticationError):
            users.authenticate_password("olive", "wrong password, again")
    with pytest.raises(LoginThrottledError, match=r"locked.*try again after"):
        users.authenticate_password("olive", PASSWORD)
    # an unknown name locks the same way, so a lockout does not reveal that an account exists
    for _ in range(LOCKOUT_FAILURES + 1):
        with pytest.raises(AuthenticationError):
            users.authenticate_password("nobody", "wrong password, again")
    with pytest.raises(LoginThrottledError):
        users.authenticate_password("nobody", "wrong password, again")

    failed = [r for r in records(app, "login.failed") if r.actor == "olive"]
    assert len(failed) == 1 and len(records(app, "login.locked")) == 2
    clock.advance(minutes=16)
    assert users.authenticate_password("olive", PASSWORD).username == "olive"
    [summary] = records(app, "login.failed.summary")
    assert summary.details["failures_not_recorded_singly"] == LOCKOUT_FAILURES - 1
    assert summary.details["refused_while_locked"] == 100 - LOCKOUT_FAILURES + 1
    [login] = [r for r in records(app, "login") if r.actor == "olive"]
    assert login.details["credential"] == "password"


def test_client_throttle_is_per_client(app: AppContext) -> None:
    users = app.users
    users.ensure_admin("admin", PASSWORD)
    users.add(ADMIN, "olive", "operator", PASSWORD)
    for i in range(10):  # different names: the account lockout does not stop this
        with pytest.raises(AuthenticationError) as err:
            users.authenticate_password(f"guess{i}", "wrong password, again", client="10.0.0.9")
        assert not isinstance(err.value, LoginThrottledError)
    for _ in range(50):
        with pytest.raises(LoginThrottledError, match="from this address"):
            users.authenticate_password("olive", PASSWORD, client="10.0.0.9")
    assert users.authenticate_password("olive", PASSWORD, client="10.0.0.7").username == "olive"
    [throttled] = records(app, "login.throttled")
    assert throttled.object_id == "10.0.0.9"
    # successful logins do not use up a client's budget (an office behind one address)
    for _ in range(20):
        users.authenticate_password("olive", PASSWORD, client="10.0.0.7")


@pytest.mark.parametrize(
    "password",
    [
        " " * 12,
        " " * 40,
        "\t" * 12,
        "short pass",
        "   short pass   ",
        "olive",
        "OLIVE" + " " * 10,
        "aaaaaaaaaaaaaaaa",
        "abababababab",
        "a long test pass\x00word",
        "x" * 1025,
    ],
)
def test_password_policy_refuses(app: AppContext, password: str) -> None:
    app.users.ensure_admin("admin", PASSWORD)
    with pytest.raises(InvalidInputError):
        app.users.add(ADMIN, "olive", "operator", password)
    app.users.add(ADMIN, "olive", "operator", PASSWORD)
    with pytest.raises(InvalidInputError):
        app.users.set_password(ADMIN, "olive", password)


def test_password_policy_accepts_passphrases(app: AppContext) -> None:
    app.users.ensure_admin("admin", PASSWORD)
    for i, password in enumerate(["correct horse battery", "Ünïcödé pässwörd", "x" * 11 + "yzw"]):
        app.users.add(ADMIN, f"user{i}", "operator", password)
        assert app.users.authenticate_password(f"user{i}", password).username == f"user{i}"


# ------------------------------------------------------------------- finding 4: impersonation


def test_one_admin_cannot_act_as_an_operator_through_the_api(app: AppContext) -> None:
    """The issue's scenario: an admin mints a token for an operator and opens a case with it."""
    users = app.users
    users.ensure_admin("admin", PASSWORD)
    users.add(ADMIN, "olive", "operator", PASSWORD)
    with TestClient(create_app(app)) as client:
        login = {"username": "admin", "password": PASSWORD}
        admin = {
            "Authorization": "Bearer "
            + client.post("/api/v1/auth/token", json=login).json()["access_token"]
        }
        minted = client.post("/api/v1/users/olive/tokens", json={}, headers=admin)
        assert minted.status_code == 403, minted.text
        assert "own user" in minted.json()["error"]["message"]
        assert records(app, "token.issue.refused")[0].actor == "admin"
        # a service account, created as such, is the one kind an admin issues tokens for
        made = client.post(
            "/api/v1/users",
            json={"username": "ci-bot", "roles": ["auditor"], "service": True},
            headers=admin,
        )
        assert made.status_code == 201 and made.json()["service"] is True
        bot = client.post("/api/v1/users/ci-bot/tokens", json={}, headers=admin)
        assert bot.status_code == 201
        assert client.post("/api/v1/users/admin/tokens", json={}, headers=admin).status_code == 201

        # olive's own token; its use is named in the audit record of what she does
        own = client.post("/api/v1/auth/token", json={"username": "olive", "password": PASSWORD})
        olive = {"Authorization": "Bearer " + own.json()["access_token"]}
        opened = client.post(
            "/api/v1/cases",
            json={
                "reference": "C-1",
                "offence_category": "robbery",
                "purpose": "identify the suspect",
                "justification": "serious offence; the CCTV still is the only lead",
            },
            headers=olive,
        )
        assert opened.status_code == 201, opened.text
    [token] = users.list_tokens(ADMIN, "olive")
    [opened_record] = records(app, "case.open")
    assert opened_record.actor == "olive"
    assert opened_record.details["credential"] == f"token:{token.id}"
    # an admin may still revoke (not mint) other people's tokens
    assert users.revoke_token(ADMIN, token.id).revoked


def test_admin_cannot_mint_a_token_for_another_person(app: AppContext) -> None:
    users = app.users
    users.ensure_admin("admin", PASSWORD)
    users.add(ADMIN, "olive", "operator", PASSWORD)
    with pytest.raises(PermissionDeniedError, match="own user"):
        users.issue_token(ADMIN, "olive")
    with pytest.raises(InvalidInputError):
        users.add(ADMIN, "bot", "auditor", PASSWORD, service=True)
    users.add(ADMIN, "bot", "auditor", service=True)
    with pytest.raises(InvalidInputError):
        users.set_password(ADMIN, "bot", PASSWORD)
    bot = users.authenticate_token(users.issue_token(ADMIN, "bot"))
    assert bot.credential is not None and bot.credential.startswith("token:")


def test_a_throttled_login_is_answered_after_a_pause(tmp_path: Path, engine: FaceEngine) -> None:
    """The tarpit: a client that ignores Retry-After waits the pause for every refused attempt,
    so a flood costs the server (and the searches beside it) next to nothing."""
    url = next(_database_url("sqlite", tmp_path))
    settings = Settings(home=tmp_path / "home", database_url=url, login_throttle_pause=0.3)
    ctx = AppContext(settings, engine=engine)
    try:
        with TestClient(create_app(ctx)) as client:
            body = {"username": "nobody", "password": "not the password at all"}
            for _ in range(12):  # past the client's budget of 10 and the account's 5
                answer = client.post("/api/v1/auth/token", json=body)
            started = time.monotonic()
            answer = client.post("/api/v1/auth/token", json=body)
            waited = time.monotonic() - started
        assert answer.status_code == 429
        assert waited >= 0.3  # a lower bound: asyncio.sleep never returns early
    finally:
        ctx.close()
