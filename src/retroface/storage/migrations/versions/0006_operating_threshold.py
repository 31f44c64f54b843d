"""operating threshold: investigation mode on cases, threshold provenance on searches

A search with no explicit threshold used to list the top-k whatever their score (issue #13).
Now it is cut at the model's operating threshold unless the case's authorisation allows
investigation mode; each search records its mode, the cut it applied and where that came from,
and the operating threshold in force. A threshold record keeps the evaluation it came from
(per-group figures for the DPIA report).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("investigation_mode", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("threshold_source", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("operating_threshold", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("operating_source", sa.String(length=20), nullable=True))
        # searches before this revision ran without a cut: "legacy", not "operating"
        batch_op.add_column(
            sa.Column("mode", sa.String(length=20), nullable=False, server_default="legacy")
        )
    with op.batch_alter_table("threshold_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("threshold_records", schema=None) as batch_op:
        batch_op.drop_column("evaluation")
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_column("mode")
        batch_op.drop_column("operating_source")
        batch_op.drop_column("operating_threshold")
        batch_op.drop_column("threshold_source")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("investigation_mode")
