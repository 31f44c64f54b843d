"""Accounts, password and token authentication, roles, and the audit trail they leave."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from tests.conftest import ADMIN

from retroface.audit import AuditLog
from retroface.core.access import Principal, require_role
from retroface.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from retroface.core.roles import Role, format_roles, parse_roles
from retroface.governance.users import AuthenticationError, UserService
from retroface.storage.db import Database
from retroface.storage.tables import ApiToken, AuditRecord, User

PASSWORD = "correct horse battery"
#: Administrators as authentication would yield them (the service checks roles, not the table).
ROOT = Principal(id=1, username="root", roles=frozenset({Role.ADMIN}))
ADMIN2 = Principal(id=3, username="admin2", roles=frozenset({Role.ADMIN}))
#: Cheap argon2 parameters keep the tests fast; production uses the library defaults.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit(db: Database, tmp_path: Path) -> AuditLog:
    return AuditLog(db, tmp_path / "keys" / "audit.pem")


@pytest.fixture
def users(db: Database, audit: AuditLog, clock: Clock) -> UserService:
    return UserService(db, audit, hasher=FAST, clock=clock)


def actions(db: Database) -> list[tuple[str, str, str | None]]:
    with db.session() as s:
        rows = s.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        return [(r.action, r.actor, r.object_id) for r in rows]


def last_details(db: Database) -> dict[str, object]:
    with db.session() as s:
        rec = s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
        return dict(rec.details)


# --------------------------------------------------------------------------- roles


def test_roles_parse_and_format() -> None:
    assert parse_roles(" Reviewer,admin,,") == {Role.ADMIN, Role.REVIEWER}
    assert parse_roles([]) == frozenset()
    assert format_roles(["reviewer", Role.ADMIN, "admin"]) == "admin,reviewer"
    with pytest.raises(InvalidInputError, match="unknown role 'root'"):
        parse_roles("admin,root")


# --------------------------------------------------------------------------- accounts


def test_add_stores_an_argon2_hash_not_the_password(users: UserService, db: Database) -> None:
    p = users.add(ROOT, "Alice", ["operator", Role.REVIEWER], PASSWORD, "Alice A.")
    assert p == Principal(
        id=p.id, username="alice", roles=frozenset({Role.OPERATOR, Role.REVIEWER})
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.username = "mallory"  # type: ignore[misc]
    with db.session() as s:
        stored = s.scalars(select(User)).one()
    assert stored.password_hash is not None and stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert stored.roles == "operator,reviewer"
    assert actions(db) == [("user.add", "root", "alice")]
    assert last_details(db) == {
        "roles": "operator,reviewer",
        "display_name": "Alice A.",
        "password_set": True,
        "service": False,
    }
    assert PASSWORD not in str(last_details(db))


def test_add_validates(users: UserService, db: Database) -> None:
    users.add(ROOT, "alice", "operator", PASSWORD)
    with pytest.raises(ConflictError):
        users.add(ROOT, "ALICE", "operator", PASSWORD)
    with pytest.raises(InvalidInputError, match="unknown role"):
        users.add(ROOT, "bob", "superuser", PASSWORD)
    with pytest.raises(InvalidInputError, match="at least one role"):
        users.add(ROOT, "bob", "", PASSWORD)
    with pytest.raises(InvalidInputError, match="at least 12"):
        users.add(ROOT, "bob", "operator", "short")
    with pytest.raises(InvalidInputError, match="username"):
        users.add(ROOT, "bob smith", "operator", PASSWORD)
    assert [a for a, _, _ in actions(db)] == ["user.add"]  # refusals change nothing


def test_list_and_get(users: UserService) -> None:
    users.add(ROOT, "carol", "auditor")
    users.add(ROOT, "bob", "reviewer,authoriser", PASSWORD)
    listed = users.list(ROOT)
    assert [u.username for u in listed] == ["bob", "carol"]
    assert listed[0].roles == {Role.REVIEWER, Role.AUTHORISER} and listed[0].has_password
    assert not listed[1].has_password and listed[1].active
    assert users.get(ROOT, "Carol").username == "carol"
    with pytest.raises(NotFoundError):
        users.get(ROOT, "nobody")


def test_ensure_admin_only_on_first_run(users: UserService, db: Database) -> None:
    first = users.ensure_admin("admin", PASSWORD)
    assert first is not None and first.roles == {Role.ADMIN}
    assert users.ensure_admin("admin2", PASSWORD) is None
    assert actions(db) == [("user.add", "system", "admin")]


def test_ensure_admin_refuses_an_existing_non_admin(users: UserService) -> None:
    users.add(ROOT, "alice", "operator")
    with pytest.raises(ConflictError):
        users.ensure_admin("alice", PASSWORD)


# --------------------------------------------------------------------------- passwords


def test_password_login(users: UserService, db: Database) -> None:
    added = users.add(ROOT, "alice", "operator", PASSWORD)
    assert users.authenticate_password(" Alice ", PASSWORD) == added
    assert actions(db)[-1] == ("login", "alice", "alice")


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("alice", "wrong password!!", "wrong password"),
        ("nobody", PASSWORD, "unknown user"),
        ("tokenonly", PASSWORD, "no password set"),
        ("", PASSWORD, "unknown user"),
    ],
)
def test_refused_logins_look_alike_and_are_audited(
    users: UserService, db: Database, username: str, password: str, reason: str
) -> None:
    users.add(ROOT, "alice", "operator", PASSWORD)
    users.add(ROOT, "tokenonly", "operator")
    with pytest.raises(AuthenticationError) as info:
        users.authenticate_password(username, password)
    assert isinstance(info.value, PermissionDeniedError)
    assert info.value.message == "invalid username or password"
    assert actions(db)[-1][0] == "login.failed"  # committed despite the exception
    assert last_details(db) == {"method": "password", "reason": reason}


def test_disabled_user_is_refused(users: UserService, db: Database) -> None:
    users.add(ROOT, "admin", "admin", PASSWORD)
    alice = users.add(ROOT, "alice", "operator", PASSWORD)
    token = users.issue_token(alice, "alice", "laptop")
    assert users.disable(ADMIN, "alice") is True
    assert users.disable(ADMIN, "alice") is False  # no change, no record
    with pytest.raises(AuthenticationError):
        users.authenticate_password("alice", PASSWORD)
    assert last_details(db) == {"method": "password", "reason": "account disabled"}
    with pytest.raises(AuthenticationError):
        users.authenticate_token(token)
    assert users.list_tokens(ADMIN, "alice")[0].revoked
    assert [a for a, _, _ in actions(db)].count("user.disable") == 1
    # Re-enabling restores password login, not the revoked tokens.
    assert users.enable(ADMIN, "alice")
    assert users.authenticate_password("alice", PASSWORD).username == "alice"
    with pytest.raises(AuthenticationError):
        users.authenticate_token(token)


def test_last_admin_cannot_be_disabled(users: UserService) -> None:
    users.add(ROOT, "admin", "admin", PASSWORD)
    with pytest.raises(ConflictError, match="last active admin"):
        users.disable(ADMIN, "admin")
    users.add(ADMIN, "admin2", "admin", PASSWORD)
    assert users.disable(ADMIN2, "admin")


def test_outdated_hash_is_upgraded_on_login(db: Database, audit: AuditLog) -> None:
    UserService(db, audit, hasher=FAST).add(ROOT, "alice", "operator", PASSWORD)
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    service = UserService(db, audit, hasher=stronger)
    service.authenticate_password("alice", PASSWORD)
    assert last_details(db) == {"method": "password", "rehashed": True, "credential": "password"}
    with db.session() as s:
        new_hash = s.scalars(select(User.password_hash)).one()
    assert new_hash is not None and not stronger.check_needs_rehash(new_hash)
    service.authenticate_password("alice", PASSWORD)
    assert last_details(db) == {"method": "password", "rehashed": False, "credential": "password"}


def test_set_password(users: UserService, db: Database) -> None:
    users.add(ROOT, "alice", "operator", PASSWORD)
    users.set_password(ADMIN, "alice", "another long passphrase")
    assert actions(db)[-1] == ("user.password", "admin", "alice")
    with pytest.raises(AuthenticationError):
        users.authenticate_password("alice", PASSWORD)
    users.authenticate_password("alice", "another long passphrase")


# --------------------------------------------------------------------------- tokens


def test_token_is_stored_hashed(users: UserService, db: Database) -> None:
    alice = users.add(ROOT, "alice", "operator")
    token = users.issue_token(alice, "alice", "ci", ttl=None)
    assert token.startswith("rf_") and len(token) > 40
    with db.session() as s:
        row = s.scalars(select(ApiToken)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.name) and row.expires_at is None
    assert users.authenticate_token(token) == alice
    assert actions(db)[-1][:2] == ("token.issue", "alice")
    assert last_details(db) == {"user": "alice", "name": "ci", "expires_at": None}


def test_expired_token_is_refused(users: UserService, db: Database, clock: Clock) -> None:
    alice = users.add(ROOT, "alice", "operator")
    token = users.issue_token(alice, "alice", "ci", ttl=timedelta(hours=1))
    assert actions(db)[-1][:2] == ("token.issue", "alice")
    clock.now += timedelta(minutes=59)
    users.authenticate_token(token)
    clock.now += timedelta(minutes=1)
    with pytest.raises(AuthenticationError):
        users.authenticate_token(token)
    assert actions(db)[-1][0] == "login.failed"
    assert last_details(db) == {"method": "token", "reason": "expired"}


def test_revoked_token_is_refused(users: UserService, db: Database) -> None:
    alice = users.add(ROOT, "alice", "operator")
    by_id = users.issue_token(alice, "alice", "one")
    by_value = users.issue_token(alice, "alice", "two")
    first = users.list_tokens(alice, "alice")[0]
    assert users.revoke_token(ADMIN, first.id).revoked
    assert users.revoke_token(alice, by_value).name == "two"
    users.revoke_token(alice, by_value)  # idempotent
    for token in (by_id, by_value):
        with pytest.raises(AuthenticationError):
            users.authenticate_token(token)
    assert [a for a, _, _ in actions(db)].count("token.revoke") == 2
    assert last_details(db) == {"method": "token", "reason": "revoked"}
    with pytest.raises(NotFoundError):
        users.revoke_token(ADMIN, "rf_unknown")


def test_unknown_token_is_refused_without_flooding_the_log(
    users: UserService, db: Database
) -> None:
    users.add(ROOT, "alice", "operator")
    before = actions(db)
    for garbage in ("", "Bearer x", "rf_" + "A" * 43, "rf_" + "x" * 500):
        with pytest.raises(AuthenticationError):
            users.authenticate_token(garbage)
    assert actions(db) == before


def test_token_for_a_disabled_user_cannot_be_issued(users: UserService) -> None:
    alice = users.add(ROOT, "alice", "operator")
    users.disable(ADMIN, "alice")
    with pytest.raises(ConflictError):
        users.issue_token(alice, "alice", "ci")
    with pytest.raises(InvalidInputError):
        users.issue_token(ADMIN, "admin", "ci", ttl=timedelta(0))


# --------------------------------------------------------------------------- roles & audit


def test_require_role() -> None:
    bob = Principal(id=1, username="bob", roles=frozenset({Role.ADMIN, Role.OPERATOR}))
    require_role(bob, Role.OPERATOR)
    require_role(bob, Role.REVIEWER, Role.ADMIN)
    require_role(bob, Role.ADMIN)
    with pytest.raises(PermissionDeniedError) as info:
        require_role(bob, Role.AUTHORISER)  # admin implies nothing else
    assert info.value.message == (
        "user 'bob' needs the role authoriser for this (has: admin, operator)"
    )


def test_every_change_is_audited_and_the_log_verifies(
    users: UserService, audit: AuditLog, db: Database
) -> None:
    users.ensure_admin("admin", PASSWORD)
    alice = users.add(ADMIN, "alice", "operator", PASSWORD)
    token = users.issue_token(alice, "alice", "laptop")
    users.authenticate_password("alice", PASSWORD)
    with pytest.raises(AuthenticationError):
        users.authenticate_password("alice", "not the password")
    users.revoke_token(alice, token)
    users.disable(ADMIN, "alice")
    assert [a for a, _, _ in actions(db)] == [
        "user.add",
        "user.add",
        "token.issue",
        "login",
        "login.failed",
        "token.revoke",
        "user.disable",
    ]
    assert audit.verify().ok
