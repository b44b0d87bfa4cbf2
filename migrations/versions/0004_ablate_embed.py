"""Evaluations record whether the embedding's edges were ablatable (``Ablation.ablate_embed``).

ACDC as published prunes the input node's edges like any other; an edge circuit scored that way
means something else than one whose embedding is always kept, so the flag joins the unique key.
Rows written before this revision were all scored with the embedding kept (false).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = ["circuit_id", "model_id", "dataset_id", "ablation", "source", "level", "ablate_mlps", "metric"]


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("ablate_embed", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.drop_constraint("uq_evaluations_key", type_="unique")
        batch.create_unique_constraint("uq_evaluations_key", [*_KEY[:7], "ablate_embed", "metric"])


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint("uq_evaluations_key", type_="unique")
        batch.create_unique_constraint("uq_evaluations_key", _KEY)
        batch.drop_column("ablate_embed")
