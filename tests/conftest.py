"""Shared fixtures: ``db`` runs a test on SQLite and, when reachable, on PostgreSQL.

Each PostgreSQL test gets a fresh schema (selected through ``search_path`` in the URL), so tests
can run in parallel against one server and leave nothing behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from retroface.storage.db import Database

PG_URL = os.environ.get("RETROFACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'retroface.db'}")
        database.migrate()
        yield database
        database.dispose()
        return
    if not _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(_driver_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    database = Database(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        database.migrate()
        yield database
    finally:
        database.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
