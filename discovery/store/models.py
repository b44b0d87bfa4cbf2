"""The store's tables as SQLAlchemy 2 declarative models (the source Alembic migrations are generated from).

These classes never leave :mod:`discovery.store`: the repository returns frozen records
(:mod:`discovery.store.records`), never ORM rows. Every change here needs a new migration in the
top-level ``migrations/versions`` folder (``alembic revision --autogenerate -m ...``, then review it).

Timestamps come from the database clock (:func:`db_now`), never from a worker's clock, so
heartbeats from many machines compare fairly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import FunctionElement

from discovery.types.jobs import JobStatus


class db_now(FunctionElement):
    """The database's current time (millisecond resolution on SQLite, ``now()`` on PostgreSQL)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now)
def _db_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "postgresql")
def _db_now_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class db_seconds_ago(FunctionElement):
    """The database's current time minus a number of seconds (for stale-heartbeat checks)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = False

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        super().__init__()


@compiles(db_seconds_ago)
def _ago_default(element: db_seconds_ago, compiler: Any, **kw: Any) -> str:
    return f"(CURRENT_TIMESTAMP - INTERVAL '{element.seconds:.3f} seconds')"


@compiles(db_seconds_ago, "postgresql")
def _ago_pg(element: db_seconds_ago, compiler: Any, **kw: Any) -> str:
    return f"(now() - interval '{element.seconds:.3f} seconds')"


@compiles(db_seconds_ago, "sqlite")
def _ago_sqlite(element: db_seconds_ago, compiler: Any, **kw: Any) -> str:
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-{element.seconds:.3f} seconds')"


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: sa.JSON, datetime: sa.DateTime(timezone=True)}


class Model(Base):
    """A model's identity: the spec it was loaded by, its architecture and the sha256 of its weights."""

    __tablename__ = "models"
    __table_args__ = (sa.UniqueConstraint("name", "weight_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(500))
    architecture: Mapped[str] = mapped_column(sa.String(100))
    weight_hash: Mapped[str] = mapped_column(sa.String(64))
    n_layers: Mapped[int]
    n_heads: Mapped[int]
    d_model: Mapped[int]
    d_mlp: Mapped[int | None]
    """NULL for rows written before revision 0002 (unknown)."""
    vocab_size: Mapped[int | None]
    flags: Mapped[str | None] = mapped_column(sa.Text())
    """The engine's architecture flags in words; NULL for rows written before revision 0003."""
    parallel_attn_mlp: Mapped[bool | None]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())


class DatasetRow(Base):
    """A tokenised dataset: its spec and the sha256 of its token ids (``prompt_hash``)."""

    __tablename__ = "datasets"
    __table_args__ = (
        sa.UniqueConstraint(
            "task", "corruption", "n_prompts", "seed", "params", "prepend_bos", "prompt_hash", name="uq_datasets_key"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(500), index=True)
    corruption: Mapped[str] = mapped_column(sa.String(100))
    n_prompts: Mapped[int]
    seed: Mapped[int]
    params: Mapped[str] = mapped_column(sa.String(2000))
    """The task parameters as canonical JSON text (sorted keys), part of the unique key."""
    prepend_bos: Mapped[bool]
    metric: Mapped[str] = mapped_column(sa.String(50))
    prompt_hash: Mapped[str] = mapped_column(sa.String(64))
    description: Mapped[str] = mapped_column(sa.String(2000))
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())


class Job(Base):
    """One requested search (or evaluation) and its state; the service's workers claim and update these."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(sa.String(100), index=True)
    params: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    """Everything else the job needs (dataset size, seed, ablation, device...), free-form JSON."""
    task: Mapped[str] = mapped_column(sa.String(500), index=True)
    tasks: Mapped[list[str] | None] = mapped_column(sa.JSON)
    model: Mapped[str] = mapped_column(sa.String(500))
    model_id: Mapped[int | None] = mapped_column(sa.ForeignKey("models.id"))
    status: Mapped[JobStatus] = mapped_column(
        sa.Enum(
            JobStatus,
            native_enum=False,
            length=16,
            create_constraint=True,
            name="job_status",
            values_callable=lambda e: [s.value for s in e],
        ),
        default=JobStatus.QUEUED,
        index=True,
    )
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int | None]
    progress_message: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(sa.String(200))
    attempts: Mapped[int] = mapped_column(default=0)
    error_type: Mapped[str | None] = mapped_column(sa.String(200))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    error_traceback: Mapped[str | None] = mapped_column(sa.Text)
    result_circuit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("circuits.id"))
    result_score: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class CircuitRow(Base):
    """A circuit by its canonical spelling; ``key`` is the sha256 of ``canonical``."""

    __tablename__ = "circuits"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    canonical: Mapped[str] = mapped_column(sa.Text)
    components: Mapped[str] = mapped_column(sa.Text)
    """Heads and MLPs, comma separated in canonical order."""
    edges: Mapped[str] = mapped_column(sa.Text)
    """Edges, comma separated in canonical order (empty for node-level circuits)."""
    size: Mapped[int]
    n_edges: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())


EVALUATION_KEY = (
    "circuit_id",
    "model_id",
    "dataset_id",
    "ablation",
    "source",
    "level",
    "ablate_mlps",
    "ablate_embed",
    "metric",
)
"""What makes an evaluation row unique: circuit x model x dataset x evaluation method."""


class Evaluation(Base):
    """One score: circuit x model x dataset x evaluation method. Unique on all of those."""

    __tablename__ = "evaluations"
    __table_args__ = (
        sa.UniqueConstraint(*EVALUATION_KEY, name="uq_evaluations_key"),
        sa.Index("ix_evaluations_model_dataset", "model_id", "dataset_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    circuit_id: Mapped[int] = mapped_column(sa.ForeignKey("circuits.id"))
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"))
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id"))
    ablation: Mapped[str] = mapped_column(sa.String(20))
    source: Mapped[str] = mapped_column(sa.String(2000))
    level: Mapped[str] = mapped_column(sa.String(10))
    ablate_mlps: Mapped[bool]
    ablate_embed: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false(), default=False)
    """Edge level: the embedding's edges were ablatable (``Ablation.ablate_embed``)."""
    metric: Mapped[str] = mapped_column(sa.String(50))
    normaliser: Mapped[str] = mapped_column(sa.String(200))
    score: Mapped[float] = mapped_column(sa.Float)
    normalised: Mapped[float | None] = mapped_column(sa.Float)
    """NULL when full == ablated (the normalisation is undefined)."""
    full: Mapped[float] = mapped_column(sa.Float)
    ablated: Mapped[float] = mapped_column(sa.Float)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())


class PatchingResult(Base):
    """One cell of a patching heatmap: the effect of patching ``sender`` (layer, head; head -1 = MLP)
    into ``receiver``."""

    __tablename__ = "patching_results"
    __table_args__ = (
        sa.UniqueConstraint(
            "model_id", "dataset_id", "kind", "receiver", "sender_layer", "sender_head", name="uq_patching_results_key"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"))
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id"))
    kind: Mapped[str] = mapped_column(sa.String(100))
    """What was patched and how, e.g. ``path`` (path patching) or ``activation``."""
    receiver: Mapped[str] = mapped_column(sa.String(100))
    sender_layer: Mapped[int]
    sender_head: Mapped[int]
    effect: Mapped[float] = mapped_column(sa.Float)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
