"""Ground truth for the reference models: which heads are previous-token and induction heads.

Computed from attention patterns alone, with a plain Hugging Face forward pass
(``output_attentions=True``, eager attention), on held-out repeated random sequences::

    BOS n1 n2 n3 r1 r2 ... rL r1 r2 ... rL

(all ``n`` and ``r`` distinct tokens drawn from the words that follow a space, ``Ġword``). Nothing
here uses the discovery code (evaluator, ablations, search), so it can check what that code finds.

- previous-token score of a head: mean attention from position i to i-1, over positions i >= 1;
- induction score: mean attention from each token of the second ``r`` block to the token right
  after that token's first occurrence (from ``r_k`` to ``r_{k+1}``; from the last ``r_L`` to the
  first token of the second block).

Both are in [0, 1]; a textbook head scores close to 1, a head that ignores position scores about
1/i on average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class HeadScores:
    """Per-head previous-token and induction scores, each a [n_layers, n_heads] array."""

    previous_token: np.ndarray
    induction: np.ndarray
    n_sequences: int
    seq_len: int
    segment_len: int

    @property
    def n_layers(self) -> int:
        return int(self.previous_token.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.previous_token.shape[1])

    def previous_token_heads(self, threshold: float = 0.5) -> list[tuple[int, int]]:
        """``(layer, head)`` of every head with previous-token score above ``threshold``."""
        return [(int(l), int(h)) for l, h in zip(*np.nonzero(self.previous_token > threshold))]

    def induction_heads(self, threshold: float = 0.5) -> list[tuple[int, int]]:
        """``(layer, head)`` of every head with induction score above ``threshold``."""
        return [(int(l), int(h)) for l, h in zip(*np.nonzero(self.induction > threshold))]


def _spaced_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids of ordinary tokens that begin with a space (``Ġ``), the special tokens excluded."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    ids = sorted(i for t, i in vocab.items() if t.startswith("\u0120") and len(t) > 1 and i not in special)
    return np.array(ids, dtype=np.int64)


def repeated_random_sequences(
    tokenizer: Any, n: int, segment_len: int, prefix_len: int = 3, seed: int = 12345
) -> np.ndarray:
    """[n, 1 + prefix_len + 2 * segment_len] ids: ``BOS noise R R`` with all tokens distinct."""
    pool = _spaced_token_ids(tokenizer)
    need = prefix_len + segment_len
    if len(pool) < need:
        raise ValueError(f"the tokenizer has {len(pool)} space-prefixed tokens; {need} distinct ones are needed")
    rng = np.random.default_rng([seed, 4242])
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    for _ in range(n):
        draw = rng.choice(pool, size=need, replace=False)
        noise, segment = draw[:prefix_len], draw[prefix_len:]
        rows.append(np.concatenate([[bos], noise, segment, segment]))
    return np.stack(rows).astype(np.int64)


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Eager attention for the block (SDPA returns no attention weights), restored afterwards."""
    before = getattr(model.config, "_attn_implementation", "eager")
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


def _load(model_dir_or_hf_model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(model_dir_or_hf_model, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from discovery.reference.training import quiet_transformers

        path = str(model_dir_or_hf_model)
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
            return model, tokenizer or AutoTokenizer.from_pretrained(path)
    if tokenizer is None:
        raise ValueError("head_scores: pass the tokenizer along with an in-memory model")
    return model_dir_or_hf_model, tokenizer


@torch.no_grad()
def head_scores(
    model_dir_or_hf_model: Any,
    tokenizer: Any = None,
    n: int = 200,
    segment_len: int | None = None,
    prefix_len: int = 3,
    seed: int = 12345,
    batch_size: int = 100,
) -> HeadScores:
    """Previous-token and induction scores of every head (see the module docstring).

    ``model_dir_or_hf_model``: a Hugging Face model directory, or a loaded causal LM (then pass its
    ``tokenizer``). ``segment_len`` defaults to the longest that fits the model's context (at most 20).
    """
    model, tokenizer = _load(model_dir_or_hf_model, tokenizer)
    n_ctx = int(getattr(model.config, "n_positions", 1024))
    if segment_len is None:
        segment_len = max(2, min(20, (n_ctx - 1 - prefix_len) // 2))
    ids = repeated_random_sequences(tokenizer, n, segment_len, prefix_len, seed)
    if ids.shape[1] > n_ctx:
        raise ValueError(f"sequences of {ids.shape[1]} tokens do not fit the model's {n_ctx} positions")
    first = 1 + prefix_len
    second = first + segment_len
    query = np.arange(second, second + segment_len)
    key = query - segment_len + 1  # the token after the first occurrence
    positions = np.arange(1, ids.shape[1])
    prev_sum: np.ndarray | None = None
    ind_sum: np.ndarray | None = None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _eager_attention(model):
            for start in range(0, n, batch_size):
                batch = torch.from_numpy(ids[start : start + batch_size]).to(device)
                attentions = model(
                    input_ids=batch, attention_mask=torch.ones_like(batch), output_attentions=True
                ).attentions
                pattern = torch.stack([a.float() for a in attentions]).cpu().numpy()  # [L, B, H, T, T]
                prev = pattern[:, :, :, positions, positions - 1].sum(axis=(1, 3))
                ind = pattern[:, :, :, query, key].sum(axis=(1, 3))
                prev_sum = prev if prev_sum is None else prev_sum + prev
                ind_sum = ind if ind_sum is None else ind_sum + ind
    finally:
        model.train(was_training)
    assert prev_sum is not None and ind_sum is not None
    return HeadScores(
        previous_token=prev_sum / (n * len(positions)),
        induction=ind_sum / (n * len(query)),
        n_sequences=n,
        seq_len=int(ids.shape[1]),
        segment_len=segment_len,
    )
