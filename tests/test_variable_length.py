"""Prompts of several token lengths: grouped by length, each group with its own per-position means.

Every figure the tool reports is a mean over prompts, so a dataset of mixed lengths must score
exactly the prompt-weighted mean of the same prompts split into one equal-length dataset per
length, each scored on its own: node and edge level, every ablation, EAP, path patching, KL.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from discovery.scoring.edge_forward import edge_attribution
from discovery.scoring.evaluator import Evaluator
from discovery.scoring.patching import path_patching
from discovery.search import run_search
from discovery.tasks import build_dataset, get_task
from discovery.types.circuit import Circuit, all_edges
from discovery.types.evaluation import Ablation

# clean / corrupt pairs of one length each; three lengths, interleaved in the file
ROWS = [
    ("1 2 3", "7 2 3", " 4", " 8"),
    ("4 5 6 7 8", "4 5 6 7 2", " 9", " 3"),
    ("2 3 4", "2 3 9", " 5", " 10"),
    ("10 11 12 13", "10 11 12 5", " 14", " 6"),
    ("5 6 7", "1 6 7", " 8", " 2"),
    ("3 4 5 6 7", "3 4 5 6 1", " 8", " 2"),
    ("6 7 8 9", "6 7 8 3", " 10", " 4"),
    ("7 8 9", "7 8 4", " 10", " 5"),
]


def write_task(path, rows) -> str:
    path.write_text(json.dumps([{"clean": c, "corrupt": k, "answer": a, "wrong": w} for c, k, a, w in rows]))
    return f"file:{path}"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, tokenizer):
    """The mixed dataset, and one dataset per length from the same rows (in the same order)."""
    root = tmp_path_factory.mktemp("lengths")
    mixed = build_dataset(get_task(write_task(root / "mixed.json", ROWS)), tokenizer, n=len(ROWS))
    lengths = sorted({len(tokenizer(c)["input_ids"]) for c, *_ in ROWS})
    parts = []
    for length in lengths:
        rows = [r for r in ROWS if len(tokenizer(r[0])["input_ids"]) == length]
        parts.append(build_dataset(get_task(write_task(root / f"len{length}.json", rows)), tokenizer, n=len(rows)))
    return mixed, parts


def combined(values_per_part, parts):
    n = sum(p.n for p in parts)
    return sum(np.asarray(v) * (p.n / n) for v, p in zip(values_per_part, parts))


def test_the_dataset_groups_prompts_by_length(datasets, tokenizer):
    mixed, parts = datasets
    assert mixed.mixed_lengths and len(mixed.groups) == len(parts) == 3
    assert sorted(g.seq_len for g in mixed.groups) == sorted(p.seq_len for p in parts)
    assert mixed.seq_len == max(p.seq_len for p in parts)
    assert sum(g.n for g in mixed.groups) == mixed.n == len(ROWS)
    for g in mixed.groups:  # each group is one length, its prompts in file order
        assert g.clean_ids.shape[1] == g.corrupt_ids.shape[1] == g.seq_len
        same_length = [r[0] for r in ROWS if len(tokenizer(r[0])["input_ids"]) + 1 == g.seq_len]  # + BOS
        assert [ex.clean for ex in g.examples] == same_length
    assert not parts[0].mixed_lengths and parts[0].length_groups == (parts[0],)


@pytest.mark.parametrize("kind", ["mean", "resample", "zero"])
@pytest.mark.parametrize("ablate_mlps", [False, True])
def test_node_and_edge_scores_equal_the_length_groups_scored_alone(datasets, tiny_model3, kind, ablate_mlps):
    mixed, parts = datasets
    ablation = Ablation(kind=kind, ablate_mlps=ablate_mlps)
    rng = random.Random(3)
    heads = tiny_model3.shape.all_heads()
    edges = all_edges(tiny_model3.shape)
    circuits = [Circuit.of(rng.sample(heads, rng.randint(0, len(heads)))) for _ in range(6)]
    circuits += [Circuit.from_edges([e for e in edges if rng.random() < f]) for f in (0.2, 0.6, 0.95)]
    ev = Evaluator(tiny_model3, mixed, ablation)
    alone = [Evaluator(tiny_model3, p, ablation) for p in parts]
    got = ev.evaluate(circuits)
    want = combined([a.metric_values(circuits) for a in alone], parts)
    assert [s.metric for s in got] == pytest.approx(list(want), abs=1e-5)
    full = combined([a.full_metric for a in alone], parts)
    ablated = combined([a.ablated_metric for a in alone], parts)
    assert (ev.full_metric, ev.ablated_metric) == pytest.approx((full, ablated), abs=1e-5)
    for s, w in zip(got, want):
        assert s.normalised == pytest.approx((w - ablated) / (full - ablated), abs=1e-4)
    # the means are each group's own: the mixed set's means over all prompts would be another score
    assert ev.groups[0].replacement.z[0].shape[1] == mixed.groups[0].seq_len


def test_eap_path_patching_and_kl_combine_the_groups(datasets, tiny_model3):
    mixed, parts = datasets
    ablation = Ablation(kind="mean", ablate_mlps=True)
    ev = Evaluator(tiny_model3, mixed, ablation)
    alone = [Evaluator(tiny_model3, p, ablation) for p in parts]
    edges, scores = edge_attribution(ev, steps=1)
    assert edges == edge_attribution(alone[0], steps=1)[0]
    assert scores == pytest.approx(combined([edge_attribution(a, steps=1)[1] for a in alone], parts), abs=1e-6)
    ig = edge_attribution(ev, steps=3)[1]
    assert ig == pytest.approx(combined([edge_attribution(a, steps=3)[1] for a in alone], parts), abs=1e-6)
    patched = path_patching(tiny_model3, mixed, "logits")
    per_part = [path_patching(tiny_model3, p, "logits") for p in parts]
    assert patched.effects == pytest.approx(combined([r.effects for r in per_part], parts), abs=1e-5)
    assert patched.clean_metric == pytest.approx(combined([r.clean_metric for r in per_part], parts), abs=1e-5)
    kl = ev.with_metric("kl")
    everything = Circuit.of(tiny_model3.shape.all_heads() + tiny_model3.shape.all_mlps())
    assert kl.evaluate_one(everything).metric == pytest.approx(0.0, abs=1e-6)  # KL of the full circuit is 0
    some = Circuit.parse("0.1,1.2")
    assert kl.evaluate_one(some).metric == pytest.approx(
        float(combined([a.with_metric("kl").evaluate_one(some).metric for a in alone], parts)), abs=1e-6
    )


def test_searches_and_the_store_run_on_mixed_lengths(datasets, tiny_model3, tmp_path):
    from discovery.scoring.stored import StoredEvaluator
    from discovery.store import open_store

    mixed, _ = datasets
    store = open_store(f"sqlite:///{tmp_path / 'mixed.db'}")
    stored = StoredEvaluator(Evaluator(tiny_model3, mixed), store)
    greedy = run_search("greedy", stored, {"target": 0.8})
    again = StoredEvaluator(Evaluator(tiny_model3, mixed), store)
    assert again.evaluate_one(greedy.circuit).metric == pytest.approx(greedy.score.metric, abs=1e-9)
    assert again.cache_hits == 1 and again.cache_misses == 0  # the mixed dataset is one stored dataset
    acdc = run_search("acdc", Evaluator(tiny_model3, mixed, Ablation("resample", ablate_mlps=True)), {"tau": 1e-4})
    assert acdc.circuit.edges and acdc.score.method.level == "edge"
    store.close()


def test_a_corrupted_prompt_must_match_its_clean_prompts_length(tmp_path, tokenizer):
    from discovery.types.errors import UsageError

    task = get_task(write_task(tmp_path / "bad.json", [("1 2 3", "1 2 3 4", " 4", " 5")]))
    with pytest.raises(UsageError, match="line up position by position"):
        build_dataset(task, tokenizer, n=1)
