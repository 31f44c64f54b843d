"""service accounts and the shared login throttle

``users.service`` marks accounts for other systems, the only ones an admin may issue tokens
for; ``login_throttle`` holds per-account failed-login windows and lockouts in the database,
so that several API workers enforce one lockout.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import retroface.storage.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("service", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "login_throttle",
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column(
            "window_start", retroface.storage.tables.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("unaudited", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column(
            "locked_until", retroface.storage.tables.UTCDateTime(timezone=True), nullable=True
        ),
        sa.PrimaryKeyConstraint("username"),
    )


def downgrade() -> None:
    op.drop_table("login_throttle")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("service")
