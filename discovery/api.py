"""The Python API: what a notebook calls, the same library calls the ``circuits`` command makes.

::

    import discovery as cd

    model = cd.load_model("ref:sequences")            # or a local HF dir, an HF model object, a TransformerBridge
    ds = cd.dataset(model, "digits", n=50, template="done-in")
    scores = cd.evaluate(model, ["0.2,1.2", "0.2"], ds)         # -> [Score], stored in the default store
    result = cd.discover(model, ds, method="greedy", target=0.9)  # -> SearchResult, recorded as a run
    patched = cd.patch(model, ds)                               # path patching -> PatchingResult
    curve = cd.curve(model, ds, method="topk")                  # faithfulness curve of a ranking
    store = cd.open_store()
    cd.evaluations(store, task="digits")                        # pandas DataFrames: evaluations, runs, circuits

Every function takes the same choices as the CLI (task, ``n``, ``seed``, ``corruption``, task
parameters, ``ablation``, ``mean_source``, ``ablate_mlps``), so ``cd.evaluate(...)`` returns exactly the
numbers ``circuits evaluate`` prints for the same options. ``store``: ``None`` uses the default store
(``CIRCUITS_DATABASE_URL``, else the embedded SQLite file), ``False`` stores nothing, a URL or an
:func:`open_store` result uses that store. A score always carries its :class:`EvaluationMethod`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from discovery.model import LoadedModel
from discovery.scoring.build import build_evaluator as make_evaluator
from discovery.scoring.build import task_dataset
from discovery.scoring.scorer import Scorer
from discovery.tasks import Dataset
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation, AblationChoice, Score
from discovery.types.identity import ModelIdentity
from discovery.types.progress import ProgressCallback

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from discovery.analysis.curves import FaithfulnessCurve
    from discovery.scoring.patching import PatchingResult
    from discovery.search.base import SearchResult
    from discovery.store import Storage

    StoreArg = Storage | str | Literal[False] | None
    """A store, a URL naming one, None for the default store, or False for none."""

__all__ = [
    "circuits",
    "curve",
    "dataset",
    "discover",
    "evaluate",
    "evaluations",
    "build_evaluator",
    "load_model",
    "open_store",
    "patch",
    "runs",
]


# --- models --------------------------------------------------------------------------------------
def load_model(
    model: Any,
    device: str = "cpu",
    tokenizer: Any = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """A model ready to score circuits, from any of

    - a spec string, as ``--model`` takes it: ``ref:sequences``, a local Hugging Face directory, a hub name;
    - a Hugging Face causal LM already in memory, of any supported architecture (``tokenizer``
      required unless it has GPT-2's vocabulary, then the packaged GPT-2 tokenizer is used);
    - a TransformerLens ``TransformerBridge`` (booted without weight processing): its HF weights are
      read back into a plain HF module, so it is identified by the same weight hash as the HF model;
    - a :class:`~discovery.model.LoadedModel` (returned as it is).

    In-memory models are named ``name`` (default: ``in-memory:<class>``) and identified, like every
    model, by the sha256 of their weights: the same weights score and store as the same model.
    """
    from discovery.model import wrap_model
    from discovery.reference import load_model as load_spec

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_spec(model, device=device, progress=progress)
    hf_model, tok = _hf_module(model, tokenizer)
    return wrap_model(hf_model, tok, name=name or f"in-memory:{type(model).__name__}", device=device)


def _hf_module(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The plain HF module and tokenizer behind an HF model or a TransformerBridge."""
    if type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model"):
        return _unwrap_bridge(model), tokenizer or getattr(model, "tokenizer", None) or _default_tokenizer(model)
    if hasattr(model, "config") and hasattr(model, "state_dict"):
        return model, tokenizer or _default_tokenizer(model)
    raise UsageError(
        f"cannot load a {type(model).__name__}: pass a spec string, a Hugging Face model, a TransformerBridge "
        "or a LoadedModel"
    )


def _default_tokenizer(model: Any) -> Any:
    from discovery.model import gpt2_tokenizer

    config = getattr(model, "config", None) or getattr(getattr(model, "original_model", None), "config", None)
    if getattr(config, "vocab_size", None) == 50257:
        return gpt2_tokenizer()
    raise UsageError("this model's vocabulary is not GPT-2's: pass its tokenizer (tokenizer=...)")


def _unwrap_bridge(bridge: Any) -> Any:
    """A fresh HF module holding the bridge's weights (booting a bridge renames the HF module's parameters
    in place, so its own state dict neither hashes nor loads like the original's)."""

    wrapped = bridge.original_model
    clean = type(wrapped)(wrapped.config)
    want = clean.state_dict()
    got: dict[str, torch.Tensor] = {}
    for key, value in wrapped.state_dict().items():
        plain = key.replace("._original_component", "")
        if plain in want and want[plain].shape == value.shape:
            got.setdefault(plain, value.detach().clone())
    missing = sorted(set(want) - set(got))
    if missing:
        raise UsageError(
            f"cannot read the bridge's weights back ({len(missing)} missing, e.g. {missing[0]}); "
            "boot the bridge without weight processing, or pass the HF model"
        )
    clean.load_state_dict(got)
    clean.tie_weights()
    return clean.eval()


# --- data and scoring -----------------------------------------------------------------------------
def dataset(
    model: LoadedModel, task: str = "digits", n: int = 50, seed: int = 0, corruption: str | None = None, **params: Any
) -> Dataset:
    """The task's prompts tokenised for ``model`` (``params``: task parameters such as ``template="done-in"``)."""
    return task_dataset(model, task, n=n, seed=seed, corruption=corruption, task_params=params)


def _store_of(store: StoreArg) -> Storage | None:
    """``None``: the default store; ``False``: none; a URL; or a store object."""
    if store is False:
        return None
    return open_store(store)


def build_evaluator(
    model: LoadedModel,
    data: Dataset,
    ablation: str = "mean",
    mean_source: str = "corrupt",
    ablate_mlps: bool = False,
    store: StoreArg = None,
    job_id: int | None = None,
    metric: str | Callable[..., torch.Tensor] | None = None,
    ablate_embed: bool = False,
) -> Scorer:
    """The evaluator for ``model`` on ``data``; with a store, wrapped so every score is kept and reused.
    ``metric``: the task's (default), ``"kl"``, a registered metric's name, or a function
    ``metric(logits, dataset) -> one value per prompt`` (stored under its name; :mod:`discovery.scoring.metrics`).
    ``ablate_embed``: edge circuits may drop the embedding's edges (ACDC's graph)."""
    chosen = Ablation.parse(ablation, mean_source, ablate_mlps, ablate_embed)
    return _stored_evaluator(model, data, chosen, _store_of(store), job_id, metric)


def _stored_evaluator(
    model: LoadedModel,
    data: Dataset,
    ablation: Ablation,
    store: Storage | None,
    job_id: int | None = None,
    metric: str | Callable[..., torch.Tensor] | None = None,
) -> Scorer:
    """The evaluator, wrapped in a StoredEvaluator on ``store`` unless it is None."""
    ev = make_evaluator(model, data, ablation, metric=metric)
    if store is None:
        return ev
    from discovery.scoring.stored import StoredEvaluator

    return StoredEvaluator(ev, store, job_id=job_id)


def _circuits(items: Iterable[Circuit | str] | Circuit | str) -> list[Circuit]:
    if isinstance(items, (Circuit, str)):
        items = [items]
    return [c if isinstance(c, Circuit) else Circuit.parse(c) for c in items]


def evaluate(
    model: LoadedModel,
    circuits: Iterable[Circuit | str] | Circuit | str,
    data: Dataset,
    ablation: str = "mean",
    mean_source: str = "corrupt",
    ablate_mlps: bool = False,
    store: StoreArg = None,
    progress: ProgressCallback | None = None,
    metric: str | Callable[..., torch.Tensor] | None = None,
    ablate_embed: bool = False,
) -> list[Score]:
    """Scores of ``circuits`` (Circuit values or strings like ``"0.2,1.2"``), as ``circuits evaluate`` prints them;
    ``metric`` and ``ablate_embed`` as in :func:`build_evaluator`."""
    parsed = _circuits(circuits)
    for c in parsed:
        c.validate(model.shape)
    ev = build_evaluator(
        model, data, ablation, mean_source, ablate_mlps, store, metric=metric, ablate_embed=ablate_embed
    )
    return ev.evaluate(parsed, progress=progress)


def _config(data: Dataset, ablation: Ablation, model: LoadedModel) -> dict[str, Any]:
    spec = data.spec
    return {
        "n": data.n,
        "seed": spec.seed,
        "corruption": spec.corruption,
        "task_params": dict(spec.params),
        "ablation": ablation.kind,
        "source": ablation.source,
        "ablate_mlps": ablation.ablate_mlps,
        "dataset": data.description,
        "weight_hash": model.identity.weight_hash,
    }


def _record_run(
    store: Storage, kind: str, params: dict[str, Any], data: Dataset, model: LoadedModel, config: dict[str, Any]
) -> int:
    """A job row for work done in this process (created already running), so ``circuits runs`` lists it."""
    model_id = store.get_or_create_model(model.identity).id
    return int(store.create_job(kind, params, data.spec.task, model.identity.name, config=config, model_id=model_id))


def discover(
    model: LoadedModel,
    data: Dataset,
    method: str = "greedy",
    ablation: str | None = None,
    mean_source: str = "corrupt",
    ablate_mlps: bool | None = None,
    store: StoreArg = None,
    progress: ProgressCallback | None = None,
    ablate_embed: bool | None = None,
    **params: Any,
) -> SearchResult:
    """Run search ``method`` with ``params`` (e.g. ``target=0.9``, ``pool=[...]``); every evaluation is stored.
    ``ablation``, ``ablate_mlps`` and ``ablate_embed`` left unset take the method's defaults (``acdc``:
    resample ablation with every edge prunable, as published; ``iterative-pruning``: MLPs ablated; others:
    mean ablation, MLPs and embedding kept)."""
    from discovery.search import get_method, run_search

    get_method(method).validate(params)  # refuse bad parameters before any work
    chosen = get_method(method).resolve_ablation(AblationChoice.parse(ablation, mean_source, ablate_mlps, ablate_embed))
    ev = _stored_evaluator(model, data, chosen, _store_of(store))
    return run_search(method, ev, params, progress)


def patch(
    model: LoadedModel,
    data: Dataset,
    receiver: str = "logits",
    store: StoreArg = None,
    progress: ProgressCallback | None = None,
) -> PatchingResult:
    """Path patching from every sender head to ``receiver`` (``logits`` or heads' inputs like ``1.2.q``); stored."""
    from discovery.scoring.patching import path_patching

    result = path_patching(model, data, receiver, progress=progress)
    chosen = _store_of(store)
    if chosen is not None:
        chosen.save_patching(result, model=model.identity, dataset=data)
    return result


def curve(
    model: LoadedModel,
    data: Dataset,
    method: str = "topk",
    grid: Sequence[int] | None = None,
    ablation: str = "mean",
    mean_source: str = "corrupt",
    ablate_mlps: bool = False,
    store: StoreArg = None,
    progress: ProgressCallback | None = None,
    **params: Any,
) -> FaithfulnessCurve:
    """The faithfulness curve of ``method``'s ranking (topk, threshold: heads; eap, eap-ig: edges).

    With a store the curve is a run: a job row ``curve`` whose result holds the whole curve
    (``result_score["extra"]["curve"]``) and whose evaluations are every point's score.
    """
    from discovery.analysis.curves import curve_of_result, ranking_of
    from discovery.search import get_method, run_search
    from discovery.search.base import SearchResult

    checked = get_method(method).validate(params)
    ablation_ = Ablation.parse(ablation, mean_source, ablate_mlps)
    chosen = _store_of(store)
    job_id = None
    if chosen is not None:
        run_params = {"ranking_method": method, "method_params": checked, "grid": list(grid) if grid else None}
        job_id = _record_run(chosen, "curve", run_params, data, model, _config(data, ablation_, model))
    ev = _stored_evaluator(model, data, ablation_, chosen, job_id)
    start = time.perf_counter()
    try:
        ranked = run_search(method, ev, params, progress)
        ranking_of(ranked)  # a clear error for a method that ranks nothing
        result = curve_of_result(ev, ranked, grid, progress)
    except BaseException as e:
        if chosen is not None and job_id is not None:
            chosen.fail_job(job_id, type(e).__name__, str(e))
        raise
    if chosen is not None and job_id is not None:
        extra = {"curve": result.as_dict(), "ranking_method": method}
        chosen.finish_job(
            job_id,
            SearchResult(
                "curve",
                {"ranking_method": method, **checked},
                ranked.circuit,
                ranked.score,
                ranked.n_evaluations + len(result.points),
                time.perf_counter() - start,
                (),
                extra,
            ),
        )
    return result


# --- the store ------------------------------------------------------------------------------------
def open_store(url: str | Storage | None = None) -> Storage:
    """The store at ``url`` (``memory:``, or any SQLAlchemy URL), else ``CIRCUITS_DATABASE_URL``, else the
    embedded SQLite file; a store instance is returned as it is."""
    from discovery.store import open_store as open_url

    return open_url(url)


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


EVALUATION_COLUMNS = (
    "id", "circuit", "size", "n_edges", "model", "model_id", "task", "dataset", "ablation", "source", "level",
    "ablate_mlps", "metric", "normaliser", "score", "normalised", "full", "ablated", "job_id", "created_at",
)  # fmt: skip


def evaluations(
    store: Storage | str | None = None,
    task: str | None = None,
    model: str | None = None,
    job_id: int | None = None,
    limit: int = 100_000,
) -> pd.DataFrame:
    """Every stored score (one row each) with its circuit, model, dataset and evaluation method."""
    rows = []
    for r in open_store(store).evaluations(task=task, model=model, job_id=job_id, limit=limit):
        m, s = r.method, r.score
        rows.append(
            {
                "id": r.id, "circuit": s.circuit.canonical, "size": s.circuit.size, "n_edges": s.circuit.n_edges,
                "model": r.model, "model_id": r.model_id, "task": r.task, "dataset": r.dataset,
                "ablation": m.ablation, "source": m.source, "level": m.level, "ablate_mlps": m.ablate_mlps,
                "metric": m.metric, "normaliser": m.normaliser, "score": s.metric, "normalised": s.normalised,
                "full": s.full, "ablated": s.ablated, "job_id": r.job_id, "created_at": r.created_at,
            }
        )  # fmt: skip
    return _frame(rows, EVALUATION_COLUMNS)


def runs(
    store: Storage | str | None = None, status: str | None = None, task: str | None = None, limit: int = 1000
) -> pd.DataFrame:
    """Jobs (searches, comparisons, curves), newest first, one row each (the columns of ``circuits runs``)."""
    from discovery.formats.eap_ig import JOB_COLUMNS, job_row

    rows = [job_row(j) for j in open_store(store).list_jobs(status=status, task=task, limit=limit)]
    for row in rows:
        row["params"] = json.dumps(row["params"], default=str)
    return _frame(rows, JOB_COLUMNS)


def circuits(store: Storage | str | None = None, limit: int = 100_000) -> pd.DataFrame:
    """Every stored circuit with its size, how often it was scored and its best normalised score (a SQL store's:
    this is a statement, which only the SQL store runs)."""
    from discovery.store import Store

    sql = open_store(store)
    if not isinstance(sql, Store):
        raise UsageError(f"circuits() reads with SQL: it needs a SQL store, not {type(sql).__name__}")
    columns, rows = sql.read_only_sql(
        "SELECT c.id, c.canonical AS circuit, c.size, c.n_edges, COUNT(e.id) AS evaluations, "
        "MAX(e.normalised) AS best_normalised FROM circuits c LEFT JOIN evaluations e ON e.circuit_id = c.id "
        "GROUP BY c.id, c.canonical, c.size, c.n_edges ORDER BY c.id",
        max_rows=limit,
    )
    return _frame([dict(zip(columns, r)) for r in rows], columns)


def identity(model: LoadedModel) -> ModelIdentity:
    """What a score's model is: name, architecture, weight hash and shape."""
    return model.identity
