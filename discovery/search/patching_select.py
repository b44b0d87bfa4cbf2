"""``topk`` and ``threshold``: heads chosen by their path-patching effect, then scored by the evaluator.

Path patching (:func:`discovery.scoring.patching.path_patching`) gives every head's effect on a receiver
(the logits by default) when its path is patched with its corrupted output. ``topk`` keeps the
``k`` heads with the largest |effect|; ``threshold`` keeps every head with |effect| >= ``threshold``
(absolute, in metric units) or >= ``threshold`` x the strongest head's |effect| (``relative``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.scoring.scorer import Scorer
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit
from discovery.types.progress import ProgressCallback


def _ranking(evaluator: Scorer, receiver: str, progress: ProgressCallback) -> list[tuple[str, float]]:
    from discovery.scoring.patching import path_patching

    result = path_patching(evaluator.model, evaluator.dataset, receiver, progress=progress)
    effects = np.asarray(result.effects)
    ranked = [
        (f"{l}.{h}", float(effects[l, h]))
        for l in range(effects.shape[0])
        for h in range(effects.shape[1])
        if np.isfinite(effects[l, h])
    ]
    return sorted(ranked, key=lambda t: -abs(t[1]))


def _result(
    key: str,
    evaluator: Scorer,
    params: dict[str, Any],
    ranked: list[tuple[str, float]],
    chosen: list[str],
    extra: dict[str, Any],
) -> SearchResult:
    circuit = Circuit.of(chosen)
    score = evaluator.evaluate([circuit])[0]
    extra = {"ranking": [[name, eff] for name, eff in ranked], **extra}
    return SearchResult(key, params, circuit, score, 0, 0.0, (score,), extra)


def topk(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    ranked = _ranking(evaluator, params["receiver"], progress)
    chosen = [name for name, _ in ranked[: params["k"]]]
    return _result("topk", evaluator, params, ranked, chosen, {})


def threshold(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    ranked = _ranking(evaluator, params["receiver"], progress)
    strongest = max((abs(e) for _, e in ranked), default=0.0)
    cut = params["threshold"] * strongest if params["relative"] else params["threshold"]
    chosen = [name for name, eff in ranked if abs(eff) >= cut and abs(eff) > 0]
    return _result("threshold", evaluator, params, ranked, chosen, {"cut": cut})


RECEIVER = Param("receiver", str, "logits", "path-patching receiver: logits, or heads' inputs such as 9.6.q,9.9")

register(
    SearchMethodSpec(
        key="topk",
        summary="the k heads with the largest path-patching effect",
        params=(Param("k", int, 10, "number of heads", minimum=1), RECEIVER),
        func=topk,
    )
)

register(
    SearchMethodSpec(
        key="threshold",
        summary="every head whose path-patching |effect| reaches a threshold (absolute or relative)",
        params=(
            Param("threshold", float, 0.1, "cut on |effect|: metric units, or a fraction of the strongest", minimum=0),
            Param("relative", bool, True, "read threshold as a fraction of the strongest head's |effect|"),
            RECEIVER,
        ),
        func=threshold,
    )
)
