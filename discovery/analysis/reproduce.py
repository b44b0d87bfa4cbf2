"""The papers' pipelines end to end on any model, each number beside the published one for GPT-2 small.

``lan_barez(model)``: Lan & Barez 2024 (apartresearch/seqcont_circuits). For each of
``lan-barez-digits``, ``-number-words`` and ``-months``: their dataset (three templates of 512
prompts, kept where the model answers correctly, ``filter=correct``), their scoring (heads and MLPs
outside the circuit mean-ablated over the 1,536 corrupted prompts; score = LD(circuit) / LD(full))
and their search (``iterative-pruning`` at 80 %). Templates whose words the model's tokenizer does
not know are left out and said so.

``greater_than(model)``: Hanna et al. 2023 (hannamw/gpt2-greater-than). Their dataset (490 prompts,
years 1000-1899, YY balanced, their nouns, 01-year corruption); the full model's probability
difference; every head's path-patching effect on the logits (their first step); their circuit scored
with paired 01-year patching (``resample`` ablation of heads and MLPs outside it) where the model
has GPT-2 small's shape; and the heads our ``threshold`` method selects.

Published values are the ones their repositories hold (files named in each :class:`Row`); they are
always labelled as published for GPT-2 small, never mixed with what was measured here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from discovery.scoring.build import build_evaluator, task_dataset
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Ablation
from discovery.types.progress import ProgressCallback, no_progress

LAN_BAREZ_REPO = "apartresearch/seqcont_circuits"
HANNA_REPO = "hannamw/gpt2-greater-than"

# results/{task}_circuit_thres_0.8.json of apartresearch/seqcont_circuits (commit 884120f, their
# iterative node pruning at 80 % on GPT-2 small): (heads as (layer, head), MLP layers)
LAN_BAREZ_PUBLISHED: dict[str, tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]]] = {
    "lan-barez-digits": (
        "results/numerals_circuit_thres_0.8.json",
        (
            (0, 1), (1, 5), (4, 4), (4, 10), (5, 0), (6, 1), (6, 6),
            (6, 10), (7, 11), (8, 1), (8, 6), (8, 8), (8, 9), (9, 1),
        ),
        (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11),
    ),
    "lan-barez-number-words": (
        "results/numwords_circuit_thres_0.8.json",
        (
            (0, 1), (1, 5), (4, 4), (4, 10), (5, 8), (6, 1), (6, 6), (6, 10), (7, 2), (7, 6),
            (7, 11), (8, 1), (8, 6), (8, 8), (8, 9), (8, 11), (9, 1), (9, 5), (9, 7),
        ),
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    ),
    "lan-barez-months": (
        "results/months_circuit_thres_0.8.json",
        ((0, 1), (0, 5), (4, 4), (6, 1), (6, 6), (6, 10), (7, 6), (7, 9), (7, 10), (7, 11), (8, 8), (9, 1), (10, 7)),
        (0, 1, 2, 3, 4, 6, 7, 8, 9, 10),
    ),
}  # fmt: skip

# circuit_discovery.py of hannamw/gpt2-greater-than: the heads whose END-position paths to the
# logits (through MLPs 8-11) make up the upper circuit, and the lower part at the YY position
HANNA_HEADS = ((5, 1), (5, 5), (6, 9), (7, 10), (8, 8), (8, 11), (9, 1))
HANNA_MLPS = (8, 9, 10, 11)
HANNA_LOWER_HEADS = ((0, 1), (0, 3), (0, 5))
HANNA_LOWER_MLPS = (0, 1, 2, 3)
HANNA_N = 490
GPT2_SMALL_SHAPE = (12, 12)


@dataclass(frozen=True)
class Row:
    """One quantity: what was measured here, and what the paper published for GPT-2 small."""

    quantity: str
    ours: str
    published: str
    source: str = ""


@dataclass
class Reproduction:
    """One task's pipeline: what it ran, and the rows to print."""

    task: str
    setting: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    result: Any = None


def _circuit(heads: tuple[tuple[int, int], ...], mlps: tuple[int, ...]) -> Circuit:
    return Circuit.of([f"{l}.{h}" for l, h in heads] + [f"m{l}" for l in mlps])


def _size(circuit: Circuit) -> str:
    return f"{len(circuit.heads)} heads, {len(circuit.mlps)} MLPs"


def _is_gpt2_small_shape(model: Any) -> bool:
    return (model.shape.n_layers, model.shape.n_heads) == GPT2_SMALL_SHAPE


def lan_barez(
    model: Any,
    per_template: int = 512,
    seed: int = 0,
    threshold: float = 0.8,
    filter_correct: bool = True,
    tasks: tuple[str, ...] = tuple(LAN_BAREZ_PUBLISHED),
    progress: ProgressCallback = no_progress,
) -> list[Reproduction]:
    """Lan & Barez's pipeline on ``model``, one :class:`Reproduction` per task."""
    from discovery.search import run_search
    from discovery.tasks.lan_barez import LanBarezTask

    templates, why_not = LanBarezTask.expressible_templates(model.tokenizer)
    out = []
    for name in tasks:
        rep = Reproduction(name, "")
        for template, why in why_not.items():
            rep.notes.append(f"template {template!r} left out: {why} (the paper has all three)")
        if not templates:
            rep.notes.append("no template can be written with this tokenizer: nothing to run")
            out.append(rep)
            continue
        params: dict[str, Any] = {"templates": ",".join(templates)}
        if filter_correct:
            params["filter"] = "correct"
        dataset = task_dataset(
            model, name, n=per_template * len(templates), seed=seed, task_params=params, progress=progress
        )
        evaluator = build_evaluator(model, dataset, Ablation(kind="mean", source="corrupt", ablate_mlps=True))
        result = run_search("iterative-pruning", evaluator, {"threshold": threshold}, progress)
        rep.result = result
        spec = dict(dataset.spec.params)
        rep.setting = (
            f"{dataset.n} prompts ({', '.join(templates)}; {per_template} each), "
            + (
                f"{spec['filtered_out']} of {spec['candidates']} candidates dropped by the correctness filter; "
                if filter_correct
                else "unfiltered; "
            )
            + f"{evaluator.method().describe()}"
        )
        source, heads, mlps = LAN_BAREZ_PUBLISHED[name]
        published = _circuit(heads, mlps)
        where = f"{LAN_BAREZ_REPO} {source}"
        full = result.extra["full_metric"]
        rep.rows += [
            Row("full-model logit difference", f"{full:.4f}", "not in their repository", ""),
            Row("circuit", result.circuit.canonical or "(empty)", published.canonical, where),
            Row("circuit size", _size(result.circuit), f"{_size(published)} of 144 heads, 12 MLPs", where),
            Row(
                "score LD(circuit) / LD(full)",
                f"{result.extra['score_value']:.4f} (threshold {threshold:g}"
                + ("" if result.target_met else ", NOT above it")
                + ")",
                f"> {threshold:g} (their pruning threshold; the score itself is not in their repository)",
                where,
            ),
            Row("pruning", f"{result.extra['rounds']} rounds, {result.n_evaluations} evaluations", "", ""),
        ]
        if _is_gpt2_small_shape(model):
            score = evaluator.evaluate([published])[0]
            rep.rows.append(
                Row(
                    "their circuit, scored here",
                    f"{score.metric / full:.4f}",
                    f"> {threshold:g} on their GPT-2 small data",
                    where,
                )
            )
        out.append(rep)
    return out


def greater_than(
    model: Any,
    n: int = HANNA_N,
    seed: int = 0,
    progress: ProgressCallback = no_progress,
) -> list[Reproduction]:
    """Hanna et al.'s pipeline on ``model`` (one :class:`Reproduction`)."""
    from discovery.scoring.patching import path_patching
    from discovery.search import run_search

    dataset = task_dataset(model, "greater-than", n=n, seed=seed)
    # their patching: everything outside the circuit takes the paired 01-year prompt's activations
    evaluator = build_evaluator(model, dataset, Ablation(kind="resample", source="corrupt", ablate_mlps=True))
    rep = Reproduction(
        "greater-than",
        f"{dataset.n} prompts ({dataset.description}, their recipe); {evaluator.method().describe()}",
    )
    full = evaluator.full_metric
    rep.rows.append(
        Row(
            "full-model probability difference",
            f"{full:.4f}",
            "in the paper (arXiv:2305.00586, section 2), not in its repository: not printed here",
            f"{HANNA_REPO} circuit_discovery.py computes it (baseline_mean)",
        )
    )
    ranked = path_patching(model, dataset, "logits", progress=progress).top(7)
    hanna = _circuit(HANNA_HEADS, ())
    rep.rows.append(
        Row(
            "strongest heads on the logits (path patching, effect on the metric)",
            ", ".join(f"{name} {effect:+.3f}" for name, effect in ranked),
            ", ".join(n.name for n in hanna.heads),
            f"{HANNA_REPO} circuit_discovery.py (attention_set_extenders)",
        )
    )
    selected = run_search("threshold", evaluator, {"threshold": 0.1, "relative": True}, progress)
    rep.rows.append(
        Row(
            "heads with >= 10 % of the strongest effect, scored (normalised)",
            f"{selected.circuit.canonical or '(none)'}: {selected.score.normalised:.4f}",
            "",
            "",
        )
    )
    if _is_gpt2_small_shape(model):
        theirs = _circuit(HANNA_HEADS + HANNA_LOWER_HEADS, HANNA_MLPS + HANNA_LOWER_MLPS)
        score = evaluator.evaluate([theirs])[0]
        rep.rows.append(
            Row(
                "their circuit, scored here (metric, share of full)",
                f"{score.metric:.4f}, {score.metric / full:.4f}" if full else f"{score.metric:.4f}",
                theirs.canonical,
                f"{HANNA_REPO} circuit_discovery.py (heads and MLPs it patches)",
            )
        )
    else:
        rep.notes.append(
            f"their circuit is GPT-2 small's (12 layers x 12 heads); this model is "
            f"{model.shape.n_layers} x {model.shape.n_heads}, so it is not scored"
        )
    rep.notes.append(
        "their circuit was read off path-patching heatmaps by hand and scored by patching paths, not nodes: "
        "the node-level scores here are comparable in kind, not equal by construction"
    )
    rep.result = selected
    return [rep]
