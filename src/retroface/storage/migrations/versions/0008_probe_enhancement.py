"""probes.parent_id, probes.derivation, searches.probe_lineage: audited probe enhancement

An enhanced probe is a new probe row (its own encrypted file and faces) that names the version it
was derived from (``parent_id``; deleted with it) and records the steps, their parameters and the
input and output hashes (``derivation``). A search records the whole chain from the original to
the version it searched (``probe_lineage``), so the disclosure export still shows it after the
probes themselves are deleted by retention.

On SQLite the column is added with a plain ``ALTER TABLE ... ADD COLUMN ... REFERENCES`` (allowed
for a nullable column): batch mode would copy and drop the ``probes`` table, and with foreign keys
on, dropping it would cascade to every probe's faces and searches.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute(
            "ALTER TABLE probes ADD COLUMN parent_id INTEGER "
            "REFERENCES probes (id) ON DELETE CASCADE"
        )
    else:
        op.add_column("probes", sa.Column("parent_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_probes_parent_id_probes",
            "probes",
            "probes",
            ["parent_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_index("ix_probes_parent_id", "probes", ["parent_id"], unique=False)
    # plain ADD COLUMN on both stores (no constraint, so no batch copy on SQLite)
    op.add_column("probes", sa.Column("derivation", sa.JSON(), nullable=True))
    op.add_column("searches", sa.Column("probe_lineage", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("searches", "probe_lineage")
    op.drop_column("probes", "derivation")
    op.drop_index("ix_probes_parent_id", table_name="probes")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_probes_parent_id_probes", "probes", type_="foreignkey")
    op.drop_column("probes", "parent_id")
