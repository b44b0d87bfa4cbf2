"""The reference models: what each is trained on, its shape, and how its held-out accuracy is measured."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from discovery.reference import data
from discovery.reference.data import Batch
from discovery.reference.training import ReferenceSpec

# --- induction ------------------------------------------------------------------------------------

INDUCTION_SEQ_LEN = 64
"""Context of the induction model: two halves of 24 tokens, a BOS and an offset of up to 15 fit."""


def _induction_batch(rng: np.random.Generator, _tokenizer: Any, batch_size: int) -> Batch:
    return data.repeated_halves_batch(rng, batch_size, INDUCTION_SEQ_LEN, len(data.INDUCTION_WORDS))


@torch.no_grad()
def _task_accuracy(model: Any, tokenizer: Any, task_name: str, n: int, seed: int, **params: Any) -> float:
    """Top-1 accuracy on a task's clean prompts: the argmax at the last position is the correct answer."""
    from discovery.tasks import build_dataset, get_task

    dataset = build_dataset(get_task(task_name, **params), tokenizer, n=n, seed=seed)
    ids = dataset.clean_ids
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
    pred = logits.argmax(-1)
    correct_ids = torch.tensor(
        [tokenizer(ex.correct[0], add_special_tokens=False)["input_ids"][0] for ex in dataset.examples]
    )
    return float((pred == correct_ids).float().mean())


def induction_accuracy(model: Any, tokenizer: Any, seed: int) -> dict[str, float]:
    """The robustness grid's minima (from attention patterns), and top-1 on the ``induction`` task.

    - ``previous-token (worst cell)``: the best head's lowest previous-token score over the cells
      (one head that holds in every cell);
    - ``induction, layer 1 (worst cell)``: the same for induction scores, over layer-1 heads;
    - ``repeated-half (worst cell)``: top-1 on the repeated half in the worst cell.
    """
    from discovery.reference.ground_truth import head_scores_grid

    grid = head_scores_grid(model, tokenizer, n=25, seed=20_000 + seed)
    out = {
        "previous-token (worst cell)": float(grid.previous_token_min.max()),
        "induction, layer 1 (worst cell)": float(grid.induction_min[1].max()),
        "repeated-half (worst cell)": grid.accuracy_min,
    }
    out["induction"] = _task_accuracy(model, tokenizer, "induction", 200, seed=10_000 + seed)
    return out


INDUCTION_TRAINED = ReferenceSpec(
    name="induction-trained",
    description="2 attention-only layers trained on random words whose half repeats (halves 4..24, BOS "
    "on/off, any offset), frozen sinusoidal positions, a polish that sharpens every head; a layer-0 "
    "previous-token head and layer-1 induction heads hold on the whole grid",
    version=5,
    words=data.INDUCTION_WORDS,
    n_layer=2,
    n_head=4,
    d_model=64,
    d_mlp=4,
    attention_only=True,
    n_positions=INDUCTION_SEQ_LEN,
    steps=3000,
    batch_size=64,
    lr=1e-3,
    constant_lr=True,  # the phase change comes at 2000-2500 steps (seed 0); a decaying rate delays it
    polish_steps=1500,
    # v4 polished at 1e-3 without the entropy term: the previous-token information stayed split over
    # two layer-0 heads, each about half on the token itself and half on the one before (0.39);
    # the entropy term at 1e-3 lifted it to 0.45, at 3e-3 to 0.65, at 1e-2 to 0.84 (this recipe)
    polish_lr=1e-2,
    polish_entropy_penalty=1.0,
    weight_decay=0.0,
    init_std=0.125,
    sinusoidal_init=True,
    freeze_positions=True,
    position_scale=0.177,  # the table's RMS (0.71) brought to init_std's
    make_batch=_induction_batch,
    evaluate=induction_accuracy,
    targets={
        "previous-token (worst cell)": 0.8,
        "induction, layer 1 (worst cell)": 0.8,
        "repeated-half (worst cell)": 0.95,
        "induction": 0.9,
    },
    num_threads=1,
)

# --- sequences ------------------------------------------------------------------------------------

SEQUENCES_POOL = 20_000
SEQUENCES_BATCH = 32
SEQUENCE_EVAL_LENGTHS = (3, 4, 5)


def _sequences_prepare(rng: np.random.Generator, tokenizer: Any, steps: int) -> list[np.ndarray]:
    # a pool of texts the batches are drawn from (smaller for a short run: never more than it can use)
    texts = data.sequence_texts(rng, min(SEQUENCES_POOL, steps * SEQUENCES_BATCH), tokenizer)
    bos = tokenizer.bos_token_id
    return [np.array([bos] + tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64) for t in texts]


def _sequences_batch(rng: np.random.Generator, pool: list[np.ndarray], batch_size: int) -> Batch:
    pad_id = 0  # <|endoftext|>; padded positions are never targets
    rows = [pool[int(i)] for i in rng.integers(len(pool), size=batch_size)]
    width = max(len(r) for r in rows)
    ids = np.full((batch_size, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch_size, width), dtype=bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
        mask[b, : len(r) - 1] = True
    return Batch(ids, mask)


def _sequences_evaluate(model: Any, tokenizer: Any, seed: int) -> dict[str, float]:
    out = {}
    for task in data.SEQUENCE_TASKS:
        accs = [
            _task_accuracy(model, tokenizer, task, 100, seed=seed + 17 * length, length=length, template=template)
            for template in data.SEQUENCE_TEMPLATES
            for length in SEQUENCE_EVAL_LENGTHS
        ]
        out[task] = float(np.mean(accs))
    return out


SEQUENCES = ReferenceSpec(
    name="sequences",
    description="4 layers; digits, number words and months in lists and 'X done in N.' sentences, "
    "with distractor text: the tasks digits, number-words, months",
    version=1,
    words=data.sequence_words(),
    n_layer=4,
    n_head=4,
    d_model=64,
    n_positions=96,
    steps=1500,
    batch_size=SEQUENCES_BATCH,
    lr=2e-3,
    make_batch=_sequences_batch,
    prepare=_sequences_prepare,
    evaluate=_sequences_evaluate,
    targets={task: 0.95 for task in data.SEQUENCE_TASKS},
)
