"""Models keep the engine's architecture flags (``ModelIdentity.flags``, ``parallel_attn_mlp``).

Rows written before this revision have NULL flags (read back as "": unknown) and no parallel blocks.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("flags", sa.Text(), nullable=True))
        batch.add_column(sa.Column("parallel_attn_mlp", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("parallel_attn_mlp")
        batch.drop_column("flags")
