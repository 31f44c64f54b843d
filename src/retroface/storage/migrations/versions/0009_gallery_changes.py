"""gallery_changes: the template ids each gallery version added and removed

A process holding the index at an older version followed another process's enrolment by
reloading the whole index file or re-decrypting every template (issue #16). With each version's
change recorded, it reads only what changed since the version it holds.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gallery_changes",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("added", sa.JSON(), nullable=False),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )


def downgrade() -> None:
    op.drop_table("gallery_changes")
