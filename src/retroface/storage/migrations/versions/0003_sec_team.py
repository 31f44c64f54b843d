"""case_members: a case's team, for need-to-know (issue #11 finding 6)

Until now any operator could work on any authorised case. From this revision a case is seen and
worked on by its owner (``cases.opened_by``), the members the owner adds and the supervisors an
authoriser adds; nothing is backfilled, so after upgrading each existing case is its opener's
alone until they add their colleagues (``retroface case team add``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import retroface.storage.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("added_by", sa.Integer(), nullable=False),
        sa.Column("added_at", retroface.storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["added_by"], ["users.id"]),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id", "user_id"),
    )
    with op.batch_alter_table("case_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_members_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_case_members_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("case_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_members_user_id"))
        batch_op.drop_index(batch_op.f("ix_case_members_case_id"))
    op.drop_table("case_members")
