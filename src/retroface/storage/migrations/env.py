"""Alembic environment: runs on the connection retroface hands it, or a URL for autogenerate."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from retroface.storage.tables import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("RETROFACE_DATABASE_URL", "sqlite:///retroface-autogen.db")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
