"""Shared fixtures.

``db`` and ``app`` run a test on SQLite and on PostgreSQL (each PostgreSQL test gets a fresh
schema selected through ``search_path``, so tests leave nothing behind). Under CI an unreachable
PostgreSQL is a failure, not a skip: it is part of what CI proves.

Face models are real (the bundled SCRFD + ArcFace weights); test images come from
``../shared/data`` or ``RETROFACE_TEST_DATA`` and are never copied into the repository.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import create_engine, text

from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.roles import Role
from retroface.storage.db import Database
from retroface.vision.types import FaceEngine

# Throttled logins are answered after a pause in production (a tarpit); tests that flood the
# login route would only wait. test_sec_login checks the pause with it set explicitly.
os.environ.setdefault("RETROFACE_LOGIN_THROTTLE_PAUSE", "0")
# The CLI's tests run it locally unless a test names a server itself (tests/test_cli_remote.py).
os.environ.pop("RETROFACE_URL", None)
PG_URL = os.environ.get("RETROFACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATA_DIR = Path(
    os.environ.get(
        "RETROFACE_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


def _driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@cache
def _postgres_available() -> bool:
    if not PG_URL:
        return False
    engine = create_engine(_driver_url(PG_URL), connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty database on ``backend``; dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'retroface.db'}"
        return
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {PG_URL} (required in CI)")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(_driver_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def database_on(backend: str, tmp_path: Path) -> Iterator[str]:
    """``_database_url`` for fixtures of a wider scope than one test (e.g. one app per store)."""
    yield from _database_url(backend, tmp_path)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _database_url(request.param, tmp_path)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "lfw").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}: set RETROFACE_TEST_DATA")
    return DATA_DIR


@pytest.fixture(scope="session")
def engine() -> FaceEngine:
    """The default backend with its real weights, loaded once."""
    from retroface.vision.engines import create_engine as create_face_engine

    return create_face_engine("arcface")


class Clock:
    """A clock tests can move: retention and urgent windows are tested by moving it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(
    database_url: str, tmp_path: Path, engine: FaceEngine, clock: Clock
) -> Iterator[Callable[..., AppContext]]:
    """Build AppContexts on one database and data directory (a second one = another process)."""
    made: list[AppContext] = []

    def make(**overrides: object) -> AppContext:
        settings = Settings(home=tmp_path / "home", database_url=database_url, **overrides)
        ctx = AppContext(settings, engine=engine, clock=clock)
        # real argon2, with cheap parameters so that tests creating many users stay quick
        ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


@pytest.fixture
def app(make_app: Callable[..., AppContext]) -> AppContext:
    return make_app()


#: An administrator as authentication would yield one, for tests that enrol, erase or manage
#: accounts through the services directly (the services check roles, not the users table).
ADMIN = Principal(id=1, username="admin", roles=frozenset({Role.ADMIN}))


def add_team(app: AppContext, roles: dict[str, str], password: str) -> dict[str, Principal]:
    """Accounts with the given roles (``admin`` is the first administrator), logged in."""
    app.users.ensure_admin("admin", password)
    for name, role in roles.items():
        if name != "admin":
            app.users.add(ADMIN, name, role, password)
    return {n: app.users.authenticate_password(n, password) for n in roles}


def enrol_people(app: AppContext, data_dir: Path) -> None:
    """The four people of ``people/`` that casework tests search for, enrolled by the admin."""
    from retroface.gallery.enrol import items_from_paths

    people = ("barack_obama", "joe_biden", "kit_harington", "rose_leslie")
    app.enroller().run(ADMIN, items_from_paths([data_dir / "people" / p for p in people]))


@pytest.fixture
def browser_app(
    make_app: Callable[..., AppContext], database_url: str
) -> Callable[..., AppContext]:
    """``make_app`` for browser tests, which run on the embedded default store only (the pages'
    rules are tested on both stores by the server-side page tests)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("browser tests run on the embedded default store")
    return make_app
