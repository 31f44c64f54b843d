"""jobs.runner: which runner holds a job, so one whose runner died can be cancelled

A job interrupted by a crash stayed ``running`` for good and a cancel only asked it to stop
(issue #11, finding 11). Knowing its runner (host, process, instance) lets the store see that
the runner is gone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runner", sa.String(length=120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("runner")
