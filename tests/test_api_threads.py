"""The API's worker threads can be bounded (``RETROFACE_API_THREADS``; unset, AnyIO's
default) and are admitted first come, first served; pooled PostgreSQL connections idle for a
while are tested and replaced before use, those in steady use are not (docs/performance.md,
"API under 50 concurrent search clients")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from retroface.api.app import create_app
from retroface.context import AppContext
from retroface.storage import db as dbmod
from retroface.storage.db import Database


def _tokens(client: TestClient) -> float:
    async def read() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    assert client.portal is not None
    return client.portal.call(read)


def test_default_leaves_anyio_default(make_app: Callable[..., AppContext]) -> None:
    with TestClient(create_app(make_app())) as client:
        assert _tokens(client) == 40


def test_serving_bounds_the_worker_threads(make_app: Callable[..., AppContext]) -> None:
    with TestClient(create_app(make_app(api_threads=3))) as client:
        assert _tokens(client) == 3
        assert client.get("/api/v1/health").status_code == 200


def test_waiters_are_admitted_in_arrival_order() -> None:
    """What the bound relies on: AnyIO's limiter lets no newcomer overtake a waiting request,
    so with one thread busy, queued calls run in the order they asked."""
    order: list[int] = []

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        gate = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, gate.wait)
            await anyio.sleep(0.05)
            for i in range(8):
                tg.start_soon(anyio.to_thread.run_sync, order.append, i)
                await anyio.sleep(0.01)  # arrive one after the other
            gate.set()

    anyio.run(main)
    assert order == list(range(8))


@pytest.mark.postgres
def test_idle_pooled_connection_killed_by_the_server_is_replaced(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a server that can drop connections")
    db = Database(database_url)
    admin = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with db.session() as s:
            first = s.scalar(text("SELECT pg_backend_pid()"))
        # in steady use the pooled connection is reused as it is
        with db.session() as s:
            assert s.scalar(text("SELECT pg_backend_pid()")) == first
        with admin.begin() as conn:  # the server (a restart, a proxy's timeout) drops it
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first})
        time.sleep(0.2)
        monkeypatch.setattr(dbmod, "PING_AFTER_IDLE_SECONDS", 0.1)
        with db.session() as s:  # idle long enough: tested, found dead, replaced
            second = s.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
    finally:
        admin.dispose()
        db.dispose()


def test_serve_keeps_idle_connections_longer_than_clients() -> None:
    """The client closes an idle connection before the server does, never the other way round
    (the race that lost a request under bench/pg_load.py)."""
    import httpx

    from retroface.cli.admin_cmds import KEEP_ALIVE_SECONDS

    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None and 2 * expiry < KEEP_ALIVE_SECONDS
