"""Storage as a decorator on the evaluator: every score is persisted, a stored one costs no forward pass.

:class:`StoredEvaluator` is a :class:`~discovery.scoring.scorer.Scorer`, the interface a search uses
(``evaluate(circuits, progress) -> list[Score]``, ``shape``, ``model``, ``dataset``, ``ablation``,
``method()``, ``full_metric``, ``ablated_metric``): a :class:`~discovery.scoring.scorer.ScorerWrapper`
forwarding what it does not change to the wrapped evaluator, which it never modifies. For each call it

1. looks the circuits up in the store (same model, dataset and evaluation method) and serves those
   found (``cache_hits``);
2. evaluates the rest through the wrapped evaluator, once per distinct circuit, in passes of
   ``max(batch_size, evaluator.circuits_per_pass)`` circuits (``cache_misses``; the wrapped
   evaluator's ``forward_count`` grows only here);
3. saves each pass's new scores in transactions of at most ``batch_size`` rows as soon as the pass
   is done. A crash loses at most the pass in flight: committed rows stay, and no half-written row
   exists (each batch is one transaction).

``full_metric`` / ``ablated_metric`` come from any stored score under the same method when one exists,
so a re-run where every circuit is stored runs no forward pass at all. ``checkpoint`` (optional) is
called before every pass: a job's checks whether it was cancelled, so a long call stops within a pass.

Two processes evaluating the same circuits at once both compute them; the store keeps one row per
evaluation (insert-or-ignore) and both get equal scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from discovery.scoring.scorer import Scorer, ScorerWrapper
from discovery.store.base import Storage
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.evaluation import Score
from discovery.types.progress import ProgressCallback


class StoredEvaluator(ScorerWrapper):
    """Serves stored scores and persists new ones; see the module docstring."""

    def __init__(
        self,
        evaluator: Scorer,
        store: Storage,
        job_id: int | None = None,
        batch_size: int = 64,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(evaluator)
        self.store = store
        self.checkpoint = checkpoint
        self.job_id = job_id
        self.batch_size = batch_size
        self.cache_hits = 0
        self.cache_misses = 0
        self._counts_to: StoredEvaluator | None = None
        self.model_record = store.get_or_create_model(evaluator.model.identity)
        self.dataset_record = store.get_or_create_dataset(evaluator.dataset)

    @property
    def evaluator(self) -> Scorer:
        """The wrapped evaluator (``inner``)."""
        return self.inner

    @property
    def model_id(self) -> int:
        return self.model_record.id

    @property
    def dataset_id(self) -> int:
        return self.dataset_record.id

    @property
    def forward_count(self) -> int:
        """Circuits the evaluator's forward computed (a stored score costs none)."""
        return self.base_evaluator.forward_count

    def with_metric(self, metric: str) -> StoredEvaluator:
        """The same evaluation under another metric, stored too (its scores are keyed by that metric)."""
        inner = self.inner.with_metric(metric)
        if inner is self.inner:
            return self
        derived = StoredEvaluator(inner, self.store, self.job_id, self.batch_size, self.checkpoint)
        derived._counts_to = self  # ACDC scores through its KL twin: the job's counts must include them
        return derived

    def _count(self, hits: int, misses: int) -> None:
        evaluator: StoredEvaluator | None = self
        while evaluator is not None:
            evaluator.cache_hits += hits
            evaluator.cache_misses += misses
            evaluator = evaluator._counts_to

    @cached_property
    def _reliable(self) -> bool:
        """The unreliable-span flag of scores served from the store (it is not a stored column)."""
        from discovery.types.evaluation import RELIABLE_SPAN

        span = abs(self.full_metric - self.ablated_metric)
        spread = self.base_evaluator.prompt_spread
        return span > 0 and span >= RELIABLE_SPAN * spread

    # --- the two ends of the normalisation ----------------------------------------------------
    @cached_property
    def _stored_baseline(self) -> tuple[float, float] | None:
        return self.store.baseline(self.model_id, self.dataset_id, self.inner.method("node"))

    # the stored value when there is one (no forward pass); else the wrapped evaluator's own
    @property
    def full_metric(self) -> float:
        stored = self._stored_baseline
        return stored[0] if stored is not None else self.inner.full_metric

    @property
    def ablated_metric(self) -> float:
        stored = self._stored_baseline
        return stored[1] if stored is not None else self.inner.ablated_metric

    # --- scoring ---------------------------------------------------------------------------------
    def evaluate(self, circuits: Sequence[Circuit], progress: ProgressCallback | None = None) -> list[Score]:
        """Scores of ``circuits`` in order: stored ones from the store, the rest computed and stored."""
        circuits = list(circuits)
        shape = self.inner.shape
        for c in circuits:
            c.validate(shape)
        found: dict[str, Score] = {}
        for level in ("node", "edge"):
            of_level = [c for c in circuits if c.level == level]
            if of_level:
                found.update(self.store.lookup(of_level, self.model_id, self.dataset_id, self.inner.method(level)))
        self._count(sum(1 for c in circuits if c.key in found), 0)
        missing = list({c.key: c for c in circuits if c.key not in found}.values())
        total = len(circuits)
        done_before = total - sum(1 for c in circuits if c.key not in found)
        if progress and done_before:
            progress(done_before, total, "circuits served from the store")
        if missing:
            per_pass = max(self.batch_size, self.circuits_per_pass)
            computed = 0
            for start in range(0, len(missing), per_pass):
                if self.checkpoint is not None:
                    self.checkpoint()
                chunk = missing[start : start + per_pass]
                scores = self.inner.evaluate(chunk)
                self._count(0, len(chunk))
                for s in scores:
                    found[s.circuit.key] = s
                for b in range(0, len(scores), self.batch_size):
                    self.store.save_scores(scores[b : b + self.batch_size], self.model_id, self.dataset_id, self.job_id)
                computed += len(chunk)
                if progress:
                    progress(min(total, done_before + computed), total, "circuits evaluated")
        return [_with_circuit(found[c.key], c, self._reliable) for c in circuits]


def _with_circuit(score: Score, circuit: Circuit, reliable: bool) -> Score:
    if score.circuit is circuit and score.reliable == reliable:
        return score
    return Score(circuit, score.metric, score.normalised, score.full, score.ablated, score.method, reliable)
