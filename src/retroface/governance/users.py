"""User accounts, password and API-token authentication, and role checks.

Every change to an account, every login and every refused login is written to the audit log in
the same transaction as the change, so the trail cannot miss an event that took effect. Secrets
are never stored: passwords as argon2id hashes, API tokens as sha256 digests (a token is 256
random bits, so a fast hash suffices and lets a token be looked up by its digest).

Callers get frozen :class:`Principal` / :class:`UserInfo` values, never ORM rows, so nothing
outside this module can change an account without going through (and being audited by) it.

Every account action takes the acting :class:`Principal` first and checks it here: managing
accounts needs admin; reading them needs admin or auditor; anyone may manage their own password
and tokens and read their own account. A refusal is audited as ``<action>.refused``. Only the
first-run :meth:`UserService.ensure_admin` acts without a principal (as the system), and
authentication, which is how a principal comes to exist.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, field_serializer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.audit.log import AuditLog
from retroface.core.access import SYSTEM, SYSTEM_ACTOR, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from retroface.core.roles import Role, format_roles, parse_roles
from retroface.core.text import clean_text, optional_text
from retroface.storage.db import Database
from retroface.storage.tables import ApiToken, User

TOKEN_PREFIX = "rf_"
DEFAULT_TOKEN_TTL = timedelta(days=90)
MIN_PASSWORD_LENGTH = 12
#: Longer passwords are refused before hashing: argon2 on megabytes of input is a cheap DoS.
MAX_PASSWORD_LENGTH = 1024
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,99}")
_LOGIN_FAILED = "invalid username or password"
_TOKEN_FAILED = "invalid, expired or revoked API token"
#: Who may change accounts, and who may read them (the API's access matrix says the same).
MANAGERS = (Role.ADMIN,)
READERS = (Role.ADMIN, Role.AUDITOR)


class AuthenticationError(PermissionDeniedError):
    """Who you are could not be established (HTTP 401), as opposed to not being allowed (403)."""

    code = "unauthenticated"


class Identity(BaseModel):
    """Who a principal is, as shown to that principal (``/me``)."""

    id: int
    username: str
    roles: list[Role]

    @classmethod
    def of(cls, principal: Principal) -> Identity:
        return cls(id=principal.id, username=principal.username, roles=sorted(principal.roles))


class Account(BaseModel):
    """An account as the API lists it (no credentials, not even whether a password is set)."""

    model_config = ConfigDict(frozen=True)

    id: int
    username: str
    display_name: str | None
    roles: frozenset[Role]
    active: bool
    created_at: datetime

    @field_serializer("roles")
    def _sorted_roles(self, roles: frozenset[Role]) -> list[Role]:
        return sorted(roles)


class UserInfo(Account):
    """An account with what its administrator may see besides (``user list --json``)."""

    has_password: bool


class TokenInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    username: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserService:
    """Accounts and authentication; ``hasher`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        self.guard = Guard(db, audit.record, clock)

    @cached_property
    def _dummy_hash(self) -> str:
        """Verified against when there is no real hash, so unknown users take as long to refuse."""
        return self.hasher.hash(secrets.token_urlsafe(16))

    # ------------------------------------------------------------------ accounts

    def add(
        self,
        principal: Principal,
        username: str,
        roles: str | Iterable[Role | str],
        password: str | None = None,
        display_name: str | None = None,
    ) -> Principal:
        """Create an account (admin); without a password it can only use API tokens."""
        self.guard.require(
            principal, *MANAGERS, action="user.add", object_type="user", object_id=username[:200]
        )
        return self._add(principal.username, username, roles, password, display_name)

    def _add(
        self,
        actor: str,
        username: str,
        roles: str | Iterable[Role | str],
        password: str | None,
        display_name: str | None,
    ) -> Principal:
        name = _check_username(username)
        role_set = parse_roles(roles)
        if not role_set:
            raise InvalidInputError("give the user at least one role")
        if display_name is not None and len(display_name) > 200:
            raise InvalidInputError("display name is longer than 200 characters")
        optional_text(display_name, "display name", 200)
        pw_hash = None if password is None else self.hasher.hash(_check_password(password, name))
        try:
            with self.db.session() as s:
                if s.scalar(select(User.id).where(User.username == name)) is not None:
                    raise ConflictError(f"user {name!r} already exists")
                user = User(
                    username=name,
                    display_name=display_name,
                    password_hash=pw_hash,
                    roles=format_roles(role_set),
                    active=True,
                    created_at=self.clock(),
                )
                s.add(user)
                s.flush()
                self.audit.record(
                    s,
                    actor=actor,
                    action="user.add",
                    object_type="user",
                    object_id=name,
                    details={
                        "roles": user.roles,
                        "display_name": display_name,
                        "password_set": password is not None,
                    },
                )
                return _principal(user)
        except IntegrityError:
            raise ConflictError(f"user {name!r} already exists") from None

    def get(self, principal: Principal, username: str) -> UserInfo:
        """One account (admin, auditor, or the account's own user)."""
        self._require_self_or(principal, username, READERS, action="user.show")
        with self.db.session() as s:
            return _info(self._user(s, username))

    def principal_for(self, username: str) -> Principal:
        """The principal of an active account, as it is now, without its credentials.

        For work a user started that runs later (a queued job re-checks its submitter's roles
        when it runs, so disabling the account or removing the role stops it) and for setting up
        a home its owner controls (``retroface demo``). Not a login: nothing is audited.
        """
        with self.db.session() as s:
            user = self._user(s, username)
            if not user.active:
                raise AuthenticationError(f"user {user.username!r} is disabled")
            return _principal(user)

    def list(self, principal: Principal) -> builtins.list[UserInfo]:
        """All accounts (admin or auditor)."""
        self.guard.require(principal, *READERS, action="user.list")
        with self.db.session() as s:
            return [_info(u) for u in s.scalars(select(User).order_by(User.username))]

    def disable(self, principal: Principal, username: str) -> bool:
        """Disable an account and revoke its tokens (admin); False if it was already disabled.

        The last active admin cannot be disabled, so the system can always be administered.
        """
        self.guard.require(
            principal, *MANAGERS, action="user.disable", object_type="user", object_id=username
        )
        with self.db.session() as s:
            user = self._user(s, username)
            if not user.active:
                return False
            if Role.ADMIN in parse_roles(user.roles) and len(_active_admins(s)) <= 1:
                raise ConflictError(
                    f"{user.username!r} is the last active admin; add another first"
                )
            user.active = False
            tokens = s.scalars(
                select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
            ).all()
            for token in tokens:
                token.revoked = True
            self.audit.record(
                s,
                actor=principal.username,
                action="user.disable",
                object_type="user",
                object_id=user.username,
                details={"tokens_revoked": [t.id for t in tokens]},
            )
            return True

    def enable(self, principal: Principal, username: str) -> bool:
        """Re-enable an account (admin; its old tokens stay revoked); False if already active."""
        self.guard.require(
            principal, *MANAGERS, action="user.enable", object_type="user", object_id=username
        )
        with self.db.session() as s:
            user = self._user(s, username)
            if user.active:
                return False
            user.active = True
            self.audit.record(
                s,
                actor=principal.username,
                action="user.enable",
                object_type="user",
                object_id=user.username,
            )
            return True

    def set_password(self, principal: Principal, username: str, password: str) -> None:
        """Set a password: an admin for anyone, everyone for themselves."""
        self._require_self_or(principal, username, MANAGERS, action="user.password")
        with self.db.session() as s:
            user = self._user(s, username)
            user.password_hash = self.hasher.hash(_check_password(password, user.username))
            self.audit.record(
                s,
                actor=principal.username,
                action="user.password",
                object_type="user",
                object_id=user.username,
            )

    def ensure_admin(self, username: str, password: str) -> Principal | None:
        """First run: create ``username`` as admin unless an active admin exists (then None)."""
        with self.db.session() as s:
            if _active_admins(s):
                return None
            existing = s.scalar(select(User).where(User.username == _check_username(username)))
            if existing is not None:
                raise ConflictError(
                    f"user {existing.username!r} exists but is not an active admin; "
                    "choose another name for the first admin"
                )
        return self._add(SYSTEM_ACTOR, username, [Role.ADMIN], password, None)

    # ------------------------------------------------------------------ passwords

    def authenticate_password(self, username: str, password: str) -> Principal:
        """Check a password; every outcome is audited and every refusal looks the same."""
        clean_text(username, "username", 100, required=False)
        name = username.strip().lower()
        principal: Principal | None = None
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.username == name)) if name else None
            stored = user.password_hash if user is not None and user.password_hash else None
            matched = self._verify(stored or self._dummy_hash, password) and stored is not None
            if user is not None and stored is not None and matched and user.active:
                rehashed = self.hasher.check_needs_rehash(stored)
                if rehashed:
                    user.password_hash = self.hasher.hash(password)
                self.audit.record(
                    s,
                    actor=user.username,
                    action="login",
                    object_type="user",
                    object_id=user.username,
                    details={"method": "password", "rehashed": rehashed},
                )
                principal = _principal(user)
            else:
                if user is None:
                    reason = "unknown user"
                elif stored is None:
                    reason = "no password set"
                elif not matched:
                    reason = "wrong password"
                else:
                    reason = "account disabled"
                self.audit.record(
                    s,
                    actor=(name or "anonymous")[:100],
                    action="login.failed",
                    object_type="user",
                    object_id=name[:200] or None,
                    details={"method": "password", "reason": reason},
                )
        # Raised after the session commits, so the refusal stays in the audit log.
        if principal is None:
            raise AuthenticationError(_LOGIN_FAILED)
        return principal

    def _verify(self, stored: str, password: str) -> bool:
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    # ------------------------------------------------------------------ API tokens

    def issue_token(
        self,
        principal: Principal,
        username: str,
        name: str = "token",
        ttl: timedelta | None = DEFAULT_TOKEN_TTL,
    ) -> str:
        """A new token, returned once and stored only as its sha256; ``ttl=None`` never expires.

        Anyone may issue tokens for themselves; issuing one for someone else needs admin.
        """
        self._require_self_or(principal, username, MANAGERS, action="token.issue")
        if not name or len(name) > 100:
            raise InvalidInputError("token name must be 1 to 100 characters")
        clean_text(name, "token name", 100)
        if ttl is not None and ttl <= timedelta(0):
            raise InvalidInputError("token lifetime must be positive")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.session() as s:
            user = self._user(s, username)
            if not user.active:
                raise ConflictError(f"user {user.username!r} is disabled")
            now = self.clock()
            row = ApiToken(
                user_id=user.id,
                token_hash=hash_token(token),
                name=name,
                created_at=now,
                expires_at=None if ttl is None else now + ttl,
                revoked=False,
            )
            s.add(row)
            s.flush()
            self.audit.record(
                s,
                actor=principal.username,
                action="token.issue",
                object_type="api_token",
                object_id=row.id,
                details={
                    "user": user.username,
                    "name": name,
                    "expires_at": None if row.expires_at is None else row.expires_at.isoformat(),
                },
            )
        return token

    def authenticate_token(self, token: str) -> Principal:
        """Resolve a bearer token; refusals of a known token are audited.

        Unknown tokens are not (anyone can send garbage; rate-limit that at the API), and
        successful uses are not either: the actions a token performs are audited themselves.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise AuthenticationError(_TOKEN_FAILED)
        with self.db.session() as s:
            found = s.execute(
                select(ApiToken, User)
                .join(User, ApiToken.user_id == User.id)
                .where(ApiToken.token_hash == hash_token(token))
            ).first()
            if found is not None:
                row, user = found
                if row.revoked:
                    reason = "revoked"
                elif row.expires_at is not None and row.expires_at <= self.clock():
                    reason = "expired"
                elif not user.active:
                    reason = "account disabled"
                else:
                    return _principal(user)
                self.audit.record(
                    s,
                    actor=user.username,
                    action="login.failed",
                    object_type="api_token",
                    object_id=row.id,
                    details={"method": "token", "reason": reason},
                )
        # Raised after the session commits, so the refusal stays in the audit log.
        raise AuthenticationError(_TOKEN_FAILED)

    def revoke_token(self, principal: Principal, token: int | str) -> TokenInfo:
        """Revoke by id, or by the token itself (e.g. one found leaked); idempotent.

        Anyone may revoke their own tokens; an admin anyone's.
        """
        where = (
            ApiToken.id == token
            if isinstance(token, int)
            else ApiToken.token_hash == hash_token(token)
        )
        with self.db.session() as s:
            owner = s.execute(
                select(ApiToken.id, User.username)
                .join(User, ApiToken.user_id == User.id)
                .where(where)
            ).first()
        if owner is None:
            raise NotFoundError("no such API token")
        self._require_self_or(
            principal,
            owner.username,
            MANAGERS,
            action="token.revoke",
            object_type="api_token",
            object_id=owner.id,
        )
        with self.db.session() as s:
            found = s.execute(
                select(ApiToken, User).join(User, ApiToken.user_id == User.id).where(where)
            ).first()
            if found is None:
                raise NotFoundError("no such API token")
            row, user = found
            if not row.revoked:
                row.revoked = True
                self.audit.record(
                    s,
                    actor=principal.username,
                    action="token.revoke",
                    object_type="api_token",
                    object_id=row.id,
                    details={"user": user.username, "name": row.name},
                )
            return _token_info(row, user.username)

    def list_tokens(self, principal: Principal, username: str) -> builtins.list[TokenInfo]:
        """A user's tokens (admin, auditor, or the user themselves)."""
        self._require_self_or(principal, username, READERS, action="token.list")
        with self.db.session() as s:
            user = self._user(s, username)
            rows = s.scalars(
                select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
            )
            return [_token_info(r, user.username) for r in rows]

    # ------------------------------------------------------------------ helpers

    def _require_self_or(
        self,
        principal: Principal,
        username: str,
        roles: tuple[Role, ...],
        *,
        action: str,
        object_type: str = "user",
        object_id: str | int | None = None,
    ) -> None:
        """Return if ``principal`` acts on their own account or holds one of ``roles``."""
        clean_text(username, "username", 100)  # before a refusal writes it to the audit log
        if principal != SYSTEM and principal.username == username.strip().lower():
            return
        self.guard.require(
            principal,
            *roles,
            action=action,
            object_type=object_type,
            object_id=username[:200] if object_id is None else object_id,
        )

    def _user(self, s: Session, username: str) -> User:
        clean_text(username, "username", 100)
        user = s.scalar(select(User).where(User.username == username.strip().lower()))
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        return user


def _check_username(username: str) -> str:
    """Usernames are case-folded so 'Alice' and 'alice' cannot be two different people."""
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidInputError(
            "username must be 1 to 100 characters: letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def _check_password(password: str, username: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInputError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == username:
        raise InvalidInputError("password must not be the username")
    return password


def _active_admins(s: Session) -> builtins.list[User]:
    users = s.scalars(select(User).where(User.active.is_(True)))
    return [u for u in users if Role.ADMIN in parse_roles(u.roles)]


def _principal(user: User) -> Principal:
    return Principal(id=user.id, username=user.username, roles=parse_roles(user.roles))


def _info(user: User) -> UserInfo:
    return UserInfo(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=parse_roles(user.roles),
        active=user.active,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
    )


def _token_info(row: ApiToken, username: str) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        username=username,
        name=row.name,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked=row.revoked,
    )
