"""Database engine and sessions: SQLite (WAL) embedded by default, PostgreSQL in production."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating ("rfschema" in ASCII): processes that
#: start together (API workers, enrolment workers) would otherwise all read the old revision and
#: race to create the same tables; the second waits, then finds the schema at head.
PG_MIGRATE_LOCK_KEY = 0x7266736368656D61
#: The execution option that marks a connection's transactions read-only (see ``read_session``).
READ_ONLY = "retroface_read_only"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_begin), not the sqlite3 module
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


#: How long a new connection keeps trying to switch a fresh file to WAL (as the busy timeout).
WAL_SWITCH_SECONDS = 30.0


def _switch_to_wal(cur: Any) -> None:
    """Put the file in WAL mode, waiting for other connections doing the same.

    The switch needs SQLite's exclusive lock. When two new connections try it at once, each holds
    the shared lock the other must wait for, and SQLite fails one of them with "database is
    locked" at once instead of calling its busy handler (a deadlock it refuses to wait on):
    2 of 300 rounds of four threads opening a fresh file failed so here, and the concurrent
    migration test failed the same way in CI under load. WAL is stored in the file, so the
    retry usually finds it already set by the winner.
    """
    pause, waited = 0.005, 0.0
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or waited >= WAL_SWITCH_SECONDS:
                raise
        time.sleep(pause)
        waited += pause
        pause = min(pause * 2, 0.1)


def _sqlite_begin(conn: Any) -> None:
    """Take SQLite's write lock at the start of every transaction.

    A deferred transaction that reads and then writes cannot wait for another writer (SQLite
    fails it with "database is locked" rather than risk a deadlock); taking the lock up front
    makes concurrent requests queue on the busy timeout instead. Reads are short, so this costs
    little, and PostgreSQL is the store for real concurrency. A read-only session
    (:meth:`Database.read_session`) begins deferred: in WAL mode it reads a snapshot without
    holding the write lock, so a long report never stalls a search.
    """
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _private_sqlite_file(path: Path) -> None:
    """Create the database file owner-only (0600) before SQLite opens it, and tighten one left
    readable by a previous version.

    SQLite would create it with 0644 under the usual umask: every local account could copy the
    gallery's metadata and the audit log. It gives the ``-wal`` and ``-shm`` files it creates the
    mode of the database file, so those follow; existing ones are tightened here too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = f.stat().st_mode & 0o777
            if mode & 0o077:
                f.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError:  # another account's file: SQLite's own checks apply
            continue


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    engine = create_engine(url)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


#: A pooled connection idle for longer than this is tested before use (see ``_ping_if_idle``).
PING_AFTER_IDLE_SECONDS = 5.0


def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info["returned_at"] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Test a pooled connection before use only if it sat idle for a while.

    ``pool_pre_ping`` tests it at every checkout: one more round trip per transaction, and a
    search runs six transactions; under 50 concurrent searches on PostgreSQL the waits for the
    server's answers were the largest share of the API's time (docs/performance.md). A connection
    that was in use a moment ago is alive; one idle for seconds may have been closed by a
    server restart or a network device, and is replaced here, before the transaction starts
    (SQLAlchemy's documented pessimistic-disconnect pattern).
    """
    returned = record.info.get("returned_at")
    if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
        return
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT 1")
        if not dbapi_conn.autocommit:
            dbapi_conn.rollback()
    except Exception as exc:
        raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


@dataclass(frozen=True)
class SchemaChange:
    """What :meth:`Database.migrate` did: from which revision (None: an empty database) to which."""

    before: str | None
    after: str
    dialect: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only transaction on one consistent snapshot, rolled back at the end.

        For reports that run many queries over a lot of rows: every query sees the same state
        (PostgreSQL: ``REPEATABLE READ, READ ONLY``; SQLite: one deferred transaction, a WAL
        snapshot) and no write lock is held meanwhile, so writers are not kept waiting.
        """
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            s = Session(bind=conn)
            try:
                yield s
            finally:
                s.rollback()
                s.close()

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return cfg

    def head_revision(self) -> str:
        """The newest revision this version of retroface ships."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        assert head is not None, "no migrations found"
        return head

    def schema_revision(self) -> str | None:
        """The revision the database is at (None: no retroface schema yet); changes nothing."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def migrate(self) -> SchemaChange:
        """Bring the schema to the newest Alembic revision (idempotent); says from which to which.

        One transaction: on PostgreSQL (transactional DDL) a failed migration leaves the schema
        as it was. Concurrent callers queue on an advisory lock (PostgreSQL) or SQLite's write
        lock, so only the first one changes anything.
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        cfg = self._alembic_config()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATE_LOCK_KEY})")
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(conn).get_current_revision()
        assert after is not None
        return SchemaChange(before, after, self.engine.dialect.name)

    def dispose(self) -> None:
        self.engine.dispose()
