"""``exhaustive``: every subset of a candidate pool up to size ``k``, scored in batches.

With ``stop_at_target`` (default) sizes are tried in increasing order and the search stops at the
smallest size whose best subset meets ``target``; the result is that subset. Otherwise (or when no
size meets the target) the result is the best subset found (ties: the smaller).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from discovery.scoring.scorer import Scorer
from discovery.search._helpers import best, candidate_pool
from discovery.search.base import Param, SearchMethodSpec, SearchResult, register
from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError
from discovery.types.progress import ProgressCallback

BATCH = 2048


def exhaustive(evaluator: Scorer, params: dict[str, Any], progress: ProgressCallback) -> SearchResult:
    pool = candidate_pool(evaluator, params["pool"], params["mlps"], "exhaustive")
    k = min(params["k"], len(pool))
    total = sum(math.comb(len(pool), size) for size in range(1, k + 1))
    if total > params["max_circuits"]:
        raise UsageError(
            f"method 'exhaustive': {total} subsets of {len(pool)} components up to size {k} exceed "
            f"max_circuits={params['max_circuits']}; shrink the pool or k, or raise max_circuits"
        )
    target = params["target"]
    overall = evaluator.evaluate([Circuit()])[0]
    per_size: list[list[Any]] = [[0, str(overall.circuit), overall.normalised]]
    steps = [overall]
    chosen = None
    done = 0
    for size in range(1, k + 1):
        size_best = None
        combos = itertools.combinations(pool, size)
        while batch := [Circuit.of(c) for c in itertools.islice(combos, BATCH)]:
            top = best(evaluator.evaluate(batch))
            size_best = top if size_best is None else best([size_best, top])
            done += len(batch)
            progress(done, total, f"size {size}: best {size_best.normalised:.3f}")
        assert size_best is not None
        steps.append(size_best)
        per_size.append([size, str(size_best.circuit), size_best.normalised])
        overall = best([overall, size_best])
        if params["stop_at_target"] and size_best.normalised >= target:
            chosen = size_best
            break
    result = chosen or overall
    return SearchResult(
        "exhaustive",
        params,
        result.circuit,
        result,
        0,
        0.0,
        tuple(steps),
        {"best_per_size": per_size, "met_target": bool(result.normalised >= target)},
        target_met=bool(result.normalised >= target),
    )


register(
    SearchMethodSpec(
        key="exhaustive",
        summary="every subset of the pool up to size k; the smallest meeting the target (or the best)",
        params=(
            Param("k", int, 3, "largest subset size", minimum=1),
            Param("pool", list, None, "candidate components, comma list (default: every head)"),
            Param("mlps", bool, False, "also consider MLPs (needs --ablate-mlps)"),
            Param("target", float, 0.9, "normalised score to reach"),
            Param("stop_at_target", bool, True, "stop at the smallest size whose best subset meets the target"),
            Param("max_circuits", int, 2_000_000, "refuse pools that would need more evaluations", minimum=1),
        ),
        func=exhaustive,
    )
)
