"""drop cases.scope_gallery: stored but never settable nor enforced

A case-level gallery scope that nothing checks is worse than none: it suggests a safeguard that
does not exist. It comes back, enforced, if a force needs several galleries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("scope_gallery")


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope_gallery", sa.String(length=100), nullable=True))
