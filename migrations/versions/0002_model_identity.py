"""Models keep their whole identity: d_mlp and vocab_size beside the other shape fields.

A store's ``ModelRecord`` now holds a ``discovery.model.ModelIdentity``; rows written before this
revision have NULL here (read back as 0: unknown).

Revision ID: 0002
Revises: 0001_initial
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("d_mlp", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("vocab_size", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("vocab_size")
        batch.drop_column("d_mlp")
