"""Scoring: every ablated forward the package runs, on the one forward of :mod:`discovery.engine`.

- :mod:`.evaluator`: :class:`~discovery.scoring.evaluator.Evaluator`, node-level scores of many
  circuits per pass (the hot path), delegating edge-level circuits to :mod:`.edge_forward`;
- :mod:`.edge_forward`: edge-level ablation, and the gradients EAP and EAP-IG read;
- :mod:`.patching`: path patching (Wang et al. 2022);
- :mod:`.hooked`: the slow path through TransformerLens hooks, for architectures the engine lacks;
- :mod:`.metrics`: the metrics (built-in, ``kl``, user functions) and how a forward is read out.

Nothing here stores, prints or knows of jobs: a search asks an evaluator for scores, the store wraps
one (:class:`discovery.scoring.stored.StoredEvaluator`).
"""
