"""User accounts, password and API-token authentication, and role checks.

Every change to an account and every login is written to the audit log in the same transaction
as the change, so the trail cannot miss an event that took effect. Failed password logins are
throttled (per account name in the database, per client in memory) and audited in bounded form:
the first of a window, the lockout, then one summary (:meth:`UserService.authenticate_password`).
Tokens are issued only to their own user, or by an admin to a service account, so nobody can act
as somebody else; each principal carries the credential it used, and audit records name it. Secrets
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
import os
import re
import secrets
import threading
import unicodedata
from collections import OrderedDict, deque
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
from retroface.storage.tables import ApiToken, LoginThrottle, User

TOKEN_PREFIX = "rf_"
DEFAULT_TOKEN_TTL = timedelta(days=90)
MIN_PASSWORD_LENGTH = 12
#: Longer passwords are refused before hashing: argon2 on megabytes of input is a cheap DoS.
MAX_PASSWORD_LENGTH = 1024
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,99}")
#: Per account name: this many failed passwords within the window lock it for the lockout, during
#: which even the right password is refused (state in the database: every API worker agrees).
LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_DURATION = timedelta(minutes=15)
#: Per client (the API passes the peer address): this many password attempts within the window
#: that did not succeed, and further attempts are refused before any hashing or database work.
CLIENT_ATTEMPTS = 10
CLIENT_WINDOW = timedelta(minutes=5)
_LOGIN_FAILED = "invalid username or password"
_TOKEN_FAILED = "invalid, expired or revoked API token"
#: Who may change accounts, and who may read them (the API's access matrix says the same).
MANAGERS = (Role.ADMIN,)
READERS = (Role.ADMIN, Role.AUDITOR)


class AuthenticationError(PermissionDeniedError):
    """Who you are could not be established (HTTP 401), as opposed to not being allowed (403)."""

    code = "unauthenticated"


class LoginThrottledError(AuthenticationError):
    """Too many failed logins for this account or from this client (HTTP 429); says when to
    try again."""

    code = "too_many_attempts"

    def __init__(self, message: str, retry_at: datetime, now: datetime) -> None:
        super().__init__(f"{message}; try again after {retry_at:%Y-%m-%d %H:%M:%S} UTC")
        self.retry_at = retry_at
        #: Whole seconds until ``retry_at`` (the ``Retry-After`` header).
        self.retry_after = max(1, int((retry_at - now).total_seconds()) + 1)


class ClientThrottle:
    """A sliding window of unsuccessful password attempts per client, in this process.

    Kept in memory, not the database, on purpose: its job is to shed a flood cheaply, so a
    refused attempt must cost neither argon2 nor a database write (a write per refused request
    would itself be the denial of service). The price: each API worker keeps its own window
    (with W workers a client gets W times the budget) and a restart forgets it; the account
    lockout, which is what protects a password, is in the database. An attempt counts from its
    start (so a client cannot run more than ``limit`` hashes at once) and is forgiven if it
    succeeds. At most ``max_clients`` are tracked (oldest forgotten first), bounding memory.
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        limit: int = CLIENT_ATTEMPTS,
        window: timedelta = CLIENT_WINDOW,
        max_clients: int = 10_000,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._attempts: OrderedDict[str, deque[datetime]] = OrderedDict()
        #: Attempts refused since the last audit record naming the client.
        self._refused: dict[str, int] = {}
        self._throttled: set[str] = set()

    def begin(self, client: str) -> tuple[datetime, bool] | None:
        """Count an attempt; or, over the limit, (when to retry, whether this refusal is the
        first of an episode: the client was let through since its last refusal)."""
        now = self.clock()
        with self._lock:
            recent = self._attempts.pop(client, None) or deque()
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            self._attempts[client] = recent  # most recently seen last
            if len(self._attempts) > self.max_clients:
                old, _ = self._attempts.popitem(last=False)
                self._refused.pop(old, None)
                self._throttled.discard(old)
            if len(recent) >= self.limit:
                self._refused[client] = self._refused.get(client, 0) + 1
                first = client not in self._throttled
                self._throttled.add(client)
                return recent[0] + self.window, first
            self._throttled.discard(client)
            recent.append(now)
            return None

    def succeeded(self, client: str) -> None:
        with self._lock:
            recent = self._attempts.get(client)
            if recent:
                recent.pop()

    def take_refused(self, client: str) -> int:
        """Refusals not yet summarised in an audit record (and reset the count)."""
        with self._lock:
            return self._refused.pop(client, 0)


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
    service: bool = False

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
        self.clients = ClientThrottle(clock)
        # argon2 is CPU-bound and releases the GIL: at most half the cores verify at once, so a
        # burst of logins (even legitimate) cannot starve searches of CPU; the rest wait here.
        self._verifying = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))

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
        *,
        service: bool = False,
    ) -> Principal:
        """Create an account (admin).

        A ``service`` account is for another system: it has no password, and it is the only
        kind of account an admin may issue tokens for (:meth:`issue_token`). A person's account
        without a password can only use tokens its user issued while they had one.
        """
        self.guard.require(
            principal, *MANAGERS, action="user.add", object_type="user", object_id=username[:200]
        )
        return self._add(principal, username, roles, password, display_name, service=service)

    def _add(
        self,
        actor: str | Principal,
        username: str,
        roles: str | Iterable[Role | str],
        password: str | None,
        display_name: str | None,
        *,
        service: bool = False,
    ) -> Principal:
        name = _check_username(username)
        if service and password is not None:
            raise InvalidInputError("a service account has no password: it uses API tokens")
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
                    service=service,
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
                        "service": service,
                    },
                )
                return _principal(user)
        except IntegrityError:
            raise ConflictError(f"user {name!r} already exists") from None

    def get(self, principal: Principal, username: str) -> UserInfo:
        """One account (admin, auditor, or the account's own user)."""
        self._require_self_or(principal, username, READERS, action="user.show")
        with self.db.session() as s:
            user = self._user(s, username)
            self.audit.record(
                s,
                actor=principal,
                action="user.show",
                object_type="user",
                object_id=user.username,
                ts=self.clock(),
            )
            return _info(user)

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
            users = [_info(u) for u in s.scalars(select(User).order_by(User.username))]
            self.audit.record(
                s,
                actor=principal,
                action="user.list",
                object_type="user",
                details={"returned": len(users)},
                ts=self.clock(),
            )
            return users

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
                actor=principal,
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
                actor=principal,
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
            if user.service:
                raise InvalidInputError("a service account has no password: it uses API tokens")
            user.password_hash = self.hasher.hash(_check_password(password, user.username))
            # A new password ends a lockout: the admin (or the user) has dealt with it.
            throttle = s.get(LoginThrottle, user.username)
            if throttle is not None:
                throttle.locked_until = None
                throttle.failures = 0
            self.audit.record(
                s,
                actor=principal,
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

    def authenticate_password(
        self, username: str, password: str, client: str | None = None
    ) -> Principal:
        """Check a password, throttled per account and per ``client``; every refusal looks the
        same (bar a throttle, which says when to try again).

        No transaction is open while argon2 runs (~0.5 s; on SQLite a transaction holds the
        write lock): the hash is read in one short transaction, verified outside any, and the
        outcome written in a second one that re-checks the account and its lockout. ``client``
        is the caller's address as the API sees it; the CLI, run on the host, passes None.

        Audit records are bounded per account name and lockout window: the first failure of a
        window is recorded, and so is the lockout; the failures after the first and the
        attempts refused while locked are counted in ``login_throttle`` and summarised in one
        ``login.failed.summary`` record when the next window opens or at the next login.
        Attempts a client's throttle refuses are counted in memory and their number is written
        into the next record that names the client (one ``login.throttled`` per episode).
        """
        clean_text(username, "username", 100, required=False)
        name = username.strip().lower()[:100]
        if client is not None:
            self._client_gate(name, client)
        principal = self._password_login(name, password, client)
        if client is not None:
            self.clients.succeeded(client)
        return principal

    def _client_gate(self, name: str, client: str) -> None:
        """Refuse a client over its budget, without hashing; audit once per episode."""
        over = self.clients.begin(client)
        if over is None:
            return
        retry_at, first = over
        now = self.clock()
        if first:  # the first refusal of this episode: one record, then only counted
            with self.db.session() as s:
                self.audit.record(
                    s,
                    actor=(name or "anonymous"),
                    action="login.throttled",
                    object_type="client",
                    object_id=client[:200],
                    details={"method": "password", "retry_at": retry_at.isoformat()},
                )
        raise LoginThrottledError(
            "too many failed logins from this address", retry_at=retry_at, now=now
        )

    def _password_login(self, name: str, password: str, client: str | None) -> Principal:
        # 1. A short read: the stored hash, and whether the name is locked out.
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.username == name)) if name else None
            stored = user.password_hash if user is not None and user.password_hash else None
            user_id = user.id if user is not None else None
            locked = self._locked(s, name)
        if locked is not None:
            raise LoginThrottledError(
                "this account is locked after too many failed logins", locked, self.clock()
            )
        # 2. argon2, outside any transaction (and the re-hash, if the parameters changed).
        with self._verifying:
            matched = self._verify(stored or self._dummy_hash, password) and stored is not None
            rehash = None
            if matched and stored is not None and self.hasher.check_needs_rehash(stored):
                rehash = self.hasher.hash(password)
        # 3. A short write: the outcome. The account is read again: it may have been disabled,
        # re-passworded or locked while the hash was being checked.
        for attempt in range(2):
            try:
                return self._record_outcome(name, user_id, stored, matched, rehash, client)
            except IntegrityError:
                # Two workers created the same name's throttle row at once (PostgreSQL): the
                # loser's transaction rolled back whole; once more finds the row.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _locked(self, s: Session, name: str) -> datetime | None:
        """The end of ``name``'s lockout if it is locked now (counting this refusal), else None."""
        row = s.get(LoginThrottle, name)
        now = self.clock()
        if row is None or row.locked_until is None or row.locked_until <= now:
            return None
        row.refused += 1
        return row.locked_until

    def _record_outcome(
        self,
        name: str,
        user_id: int | None,
        stored: str | None,
        matched: bool,
        rehash: str | None,
        client: str | None,
    ) -> Principal:
        now = self.clock()
        extra: dict[str, object] = {} if client is None else {"client": client}
        if client is not None and (refused := self.clients.take_refused(client)):
            extra["client_refused"] = refused
        principal: Principal | None = None
        locked: datetime | None = None
        with self.db.session() as s:
            user = s.get(User, user_id) if user_id is not None else None
            row = s.get(LoginThrottle, name, with_for_update=True)
            if row is not None and row.locked_until is not None and row.locked_until > now:
                row.refused += 1  # locked by a concurrent attempt: even the right password waits
                locked = row.locked_until
            elif (
                matched
                and user is not None
                and user.active
                and user.password_hash == stored
                and stored is not None
            ):
                if rehash is not None:
                    user.password_hash = rehash
                if row is not None:
                    self._summarise(s, row, extra)
                    s.delete(row)
                principal = _principal(user, credential="password")
                self.audit.record(
                    s,
                    actor=principal,
                    action="login",
                    object_type="user",
                    object_id=user.username,
                    details={"method": "password", "rehashed": rehash is not None, **extra},
                )
            else:
                if user is None:
                    reason = "unknown user"
                elif stored is None or user.password_hash is None:
                    reason = "no password set"
                elif not matched or user.password_hash != stored:
                    reason = "wrong password"
                else:
                    reason = "account disabled"
                locked = self._count_failure(s, row, name, now, reason, extra)
        # Raised after the session commits, so the refusal stays in the audit log.
        if locked is not None:
            raise LoginThrottledError(
                "this account is locked after too many failed logins", locked, now
            )
        if principal is None:
            raise AuthenticationError(_LOGIN_FAILED)
        return principal

    def _count_failure(
        self,
        s: Session,
        row: LoginThrottle | None,
        name: str,
        now: datetime,
        reason: str,
        extra: dict[str, object],
    ) -> datetime | None:
        """Count a failure in ``name``'s window; audit it if it is the window's first, and the
        lockout if this failure starts one (whose end is returned)."""
        if row is not None and row.window_start <= now - LOCKOUT_WINDOW:
            self._summarise(s, row, extra)
            s.delete(row)
            s.flush()
            row = None
        if row is None:
            row = LoginThrottle(username=name, window_start=now, failures=0, unaudited=0, refused=0)
            s.add(row)
        row.failures += 1
        actor = name or "anonymous"
        # The first failure of a window is recorded, and so is one carrying the count of a
        # client's throttled attempts (once per throttling episode), which would be lost else.
        if row.failures == 1 or "client_refused" in extra:
            self.audit.record(
                s,
                actor=actor,
                action="login.failed",
                object_type="user",
                object_id=name or None,
                details={"method": "password", "reason": reason, **extra},
            )
        else:
            row.unaudited += 1
        if row.failures >= LOCKOUT_FAILURES and row.locked_until is None:
            row.locked_until = now + LOCKOUT_DURATION
            self.audit.record(
                s,
                actor=actor,
                action="login.locked",
                object_type="user",
                object_id=name or None,
                details={
                    "failures": row.failures,
                    "since": row.window_start.isoformat(),
                    "until": row.locked_until.isoformat(),
                    **extra,
                },
            )
            s.flush()
            return row.locked_until
        s.flush()
        return None

    def _summarise(self, s: Session, row: LoginThrottle, extra: dict[str, object]) -> None:
        """One record for what a closed window counted but did not audit one by one."""
        if not row.unaudited and not row.refused:
            return
        self.audit.record(
            s,
            actor=row.username or "anonymous",
            action="login.failed.summary",
            object_type="user",
            object_id=row.username or None,
            details={
                "window_start": row.window_start.isoformat(),
                "failures": row.failures,
                "failures_not_recorded_singly": row.unaudited,
                "refused_while_locked": row.refused,
                **extra,
            },
        )

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

        A token is issued to its own user only, so nobody can act as somebody else: the one
        exception is a service account (created as such, with no password), whose tokens an
        admin issues. An admin may revoke anyone's tokens but not mint them.
        """
        clean_text(username, "username", 100)  # before a refusal writes it to the audit log
        clean_text(name, "token name", 100, required=False)
        target = username.strip().lower()
        own = principal != SYSTEM and principal.username == target
        if not own:
            self.guard.require(
                principal, *MANAGERS, action="token.issue", object_type="user", object_id=target
            )
            with self.db.session() as s:
                service = self._user(s, username).service
            if not service:
                self.guard.refused(
                    principal,
                    "token.issue",
                    error := PermissionDeniedError(
                        f"tokens are issued only to their own user: {target!r} must log in and "
                        "issue their own (admins issue tokens for service accounts only)"
                    ),
                    object_type="user",
                    object_id=target[:200],
                )
                raise error
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
            if not own and not user.service:  # it changed since the check above
                raise PermissionDeniedError("tokens are issued only to their own user")
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
                actor=principal,
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
                    return _principal(user, credential=f"token:{row.id}")
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
                    actor=principal,
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
    """The password policy: cheap rules that refuse what no one should be allowed to choose.

    Lengths count characters after Unicode normalisation (NFC, as typed on any keyboard),
    without surrounding whitespace, so padding cannot make a short password long enough and
    12 spaces are refused. Control characters are refused (they cannot be typed reliably and
    NUL breaks some stores). A password must not be the username, nor one character repeated
    or nearly so (fewer than 4 distinct characters).
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInputError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    core = unicodedata.normalize("NFC", password).strip()
    if not core:
        raise InvalidInputError("password must not be blank")
    if len(core) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters "
            "(not counting spaces at either end)"
        )
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise InvalidInputError("password must not contain control characters")
    if core.lower() == username or core.lower().replace(" ", "") == username:
        raise InvalidInputError("password must not be the username")
    if len(set(core.lower())) < 4:
        raise InvalidInputError("password must use at least 4 different characters")
    return password


def _active_admins(s: Session) -> builtins.list[User]:
    users = s.scalars(select(User).where(User.active.is_(True)))
    return [u for u in users if Role.ADMIN in parse_roles(u.roles)]


def _principal(user: User, credential: str | None = None) -> Principal:
    return Principal(
        id=user.id, username=user.username, roles=parse_roles(user.roles), credential=credential
    )


def _info(user: User) -> UserInfo:
    return UserInfo(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=parse_roles(user.roles),
        active=user.active,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
        service=user.service,
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
