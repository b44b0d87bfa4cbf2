"""The model-correctness filter: keep the prompts a model answers correctly (``filter=correct``).

Lan & Barez 2024 keep a prompt when the model's top-1 next token is the answer and
p(answer) > 2 p(wrong answer) (``src/generate_data/generate_data.py``, ``get_good_prompts_*``).
With several answer tokens (greater-than) the same rule reads: the top-1 token is one of the correct
tokens and the correct tokens' total probability is more than twice the wrong ones'.

The candidates come from the task's prefix-stable stream (:meth:`~discovery.tasks.base.Task.candidates`):
the filter asks for n, scores them, asks for twice as many if too few passed, and so on up to the
task's :meth:`~discovery.tasks.base.Task.max_candidates`; the task's
:meth:`~discovery.tasks.base.Task.select` picks the dataset (default: the first n that pass; Lan &
Barez's tasks keep whole groups of the eight start members, as the paper does).

The model's logits come from :func:`full_model_last_logits`, the one place this module runs the
model.
"""

from __future__ import annotations

from typing import Any

import torch

from discovery.tasks.base import Example, Task, _tokenise, _Tokenised
from discovery.types.errors import UsageError

PROBABILITY_RATIO = 2.0
"""p(correct) must exceed this multiple of p(wrong) (Lan & Barez's "2 *")."""


@torch.no_grad()
def full_model_last_logits(model: Any, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[n, vocab] float32 logits of the unablated model at the last position of each row of ``ids``
    (``[n, seq]``, every row the same length, so no padding). On the engine's forward when the
    model has the fast path (the one forward every score is computed with), else the HF module's."""
    from discovery.engine import record_forward

    engine = model.engine if getattr(model, "fast_path", False) else None
    out = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            chunk = ids[start : start + batch_size].to(model.device)
            if engine is not None:
                logits = engine.logits(record_forward(engine, chunk).resid_final[:, -1])
            else:
                mask = torch.ones_like(chunk)  # no padding: every row is one length
                logits = model.hf_model(input_ids=chunk, attention_mask=mask).logits[:, -1, :]
            out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _last_logits_by_length(model: Any, rows: list[list[int]]) -> torch.Tensor:
    """[len(rows), vocab] last-position logits of token rows that may differ in length (one batch per length)."""
    out: torch.Tensor | None = None
    for length in dict.fromkeys(len(r) for r in rows):
        which = [i for i, r in enumerate(rows) if len(r) == length]
        logits = full_model_last_logits(model, torch.tensor([rows[i] for i in which], dtype=torch.long))
        if out is None:
            out = torch.empty(len(rows), logits.shape[-1])
        out[which] = logits
    assert out is not None
    return out


def answers_correctly(
    logits: torch.Tensor, answers: list[list[tuple[int, float]]], ratio: float = PROBABILITY_RATIO
) -> list[bool]:
    """Per prompt: the top-1 token is a correct answer and p(correct) > ratio * p(wrong).

    ``logits``: [n, vocab]; ``answers``: per prompt, (token id, +1 correct / -1 wrong)."""
    probs = logits.softmax(-1)
    top = probs.argmax(-1)
    out = []
    for i, row in enumerate(answers):
        correct = [t for t, sign in row if sign > 0]
        wrong = [t for t, sign in row if sign < 0]
        p_correct = float(probs[i, correct].sum())
        p_wrong = float(probs[i, wrong].sum()) if wrong else 0.0
        out.append(int(top[i]) in correct and p_correct > ratio * p_wrong)
    return out


def filter_candidates(
    task: Task,
    model: Any,
    tokenizer: Any,
    bos: list[int],
    n: int,
    seed: int,
    corruption: str,
    progress: Any = None,
) -> tuple[list[Example], _Tokenised, int]:
    """``(examples, tokenised, considered)``: the ``n`` selected examples and how many candidates
    were looked at to find them."""
    limit = task.max_candidates(n)
    m = n
    passing: list[bool] = []
    candidates: list[Example] = []
    tok: _Tokenised | None = None
    while True:
        candidates = task.candidates(m, seed, corruption, tokenizer)
        new = candidates[len(passing) :]
        more = _tokenise(new, tokenizer, bos, offset=len(passing))
        tok = (
            more
            if tok is None
            else _Tokenised(tok.clean + more.clean, tok.corrupt + more.corrupt, tok.answers + more.answers)
        )
        if new:
            passing += answers_correctly(_last_logits_by_length(model, more.clean), more.answers)
        if progress is not None:
            progress(len(passing), None, f"filter: {sum(passing)} of {len(passing)} candidates answered correctly")
        chosen = task.select(passing, n)
        if chosen is not None:
            indices, considered = chosen
            break
        if len(candidates) >= limit or len(candidates) < m:
            raise UsageError(
                f"task {task.name!r}: only {sum(passing)} of {len(candidates)} candidate prompts pass the "
                f"correctness filter (top-1 answer with p(correct) > {PROBABILITY_RATIO:g} p(wrong)) on this "
                f"model, too few for {n} prompts; ask for fewer (--n) or drop filter=correct"
            )
        m = min(2 * m, limit)
    assert tok is not None
    picked = _Tokenised(
        [tok.clean[i] for i in indices], [tok.corrupt[i] for i in indices], [tok.answers[i] for i in indices]
    )
    return [candidates[i] for i in indices], picked, considered
