"""Made-up store contents shared by the store and service tests: scores of distinct node circuits, and
a job's heartbeat aged on the database's own clock."""

from __future__ import annotations

import sqlalchemy as sa

from discovery.types.circuit import Circuit
from discovery.types.evaluation import EvaluationMethod, Score

METHOD = EvaluationMethod("mean", "digits[corruption=repeat-last,n=8,seed=0]:corrupt", "node", False, "logit_diff")


def synthetic_scores(n: int, offset: int = 0, method: EvaluationMethod = METHOD) -> list[Score]:
    """Distinct node-level circuits (bit patterns over 3 layers x 4 heads) with made-up scores."""
    out = []
    for i in range(offset, offset + n):
        nodes = [f"{b // 4}.{b % 4}" for b in range(12) if (i + 1) >> b & 1]
        c = Circuit.parse(",".join(nodes))
        out.append(Score(c, -0.5 + i * 1e-3, (i % 97) / 97, 1.0, -1.0, method))
    return out


def age_heartbeat(store, job_id: int, seconds: float) -> None:
    """Set the job's heartbeat ``seconds`` in the past on the database's own clock."""
    from discovery.store.models import Job, db_seconds_ago

    with store.engine.begin() as conn:
        conn.execute(
            sa.update(Job.__table__).where(Job.__table__.c.id == job_id).values(heartbeat_at=db_seconds_ago(seconds))
        )
