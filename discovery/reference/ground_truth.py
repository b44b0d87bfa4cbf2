"""Ground truth for the reference models: which heads are previous-token and induction heads.

Computed from attention patterns alone, with a plain Hugging Face forward pass
(``output_attentions=True``, eager attention), on held-out repeated random sequences::

    [BOS] n1 .. nk r1 r2 ... rL r1 r2 ... rL m1 ..

(all ``n``, ``r`` and ``m`` distinct tokens drawn from the words that follow a space, ``Ġword``).
:func:`head_scores` scores one setting; :func:`head_scores_grid` the robustness grid: halves
``L`` of 4, 8, ..., 24, with and without BOS, each sequence with its own offset ``k`` (0 up to what
the context allows), reporting each head's worst cell, its mean, and the top-1 accuracy of the
model's next-token prediction on the repeated half. Nothing here uses the discovery code
(evaluator, ablations, search), so it can check what that code finds.

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
    accuracy: float = float("nan")
    """Top-1 accuracy of the next-token prediction on the repeated half (its 2nd to last token)."""

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
    tokenizer: Any,
    n: int,
    segment_len: int,
    prefix_len: int = 3,
    seed: int = 12345,
    bos: bool = True,
    max_prefix_len: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``([n, T] ids, [n] offsets)``: ``[BOS] noise R R`` with all tokens distinct, T the same for every row.

    With ``max_prefix_len`` each row gets its own number of noise tokens in ``prefix_len..max_prefix_len``
    (padded at the end with more distinct noise), so the repeated block starts at a random offset;
    ``offsets[i]`` is where row i's first ``R`` starts.
    """
    pool = _spaced_token_ids(tokenizer)
    longest_prefix = prefix_len if max_prefix_len is None else max_prefix_len
    need = longest_prefix + segment_len
    if len(pool) < need:
        raise ValueError(f"the tokenizer has {len(pool)} space-prefixed tokens; {need} distinct ones are needed")
    rng = np.random.default_rng([seed, 4242, segment_len, int(bos)])
    start = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id] if bos else []
    rows, offsets = [], []
    for _ in range(n):
        k = prefix_len if max_prefix_len is None else int(rng.integers(prefix_len, max_prefix_len + 1))
        draw = rng.choice(pool, size=need, replace=False)
        noise, segment = draw[:k], draw[longest_prefix:]
        tail = draw[k:longest_prefix]  # the same length for every row
        rows.append(np.concatenate([start, noise, segment, segment, tail]))
        offsets.append(len(start) + k)
    return np.stack(rows).astype(np.int64), np.array(offsets)


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
def _pattern_scores(
    model: Any, ids: np.ndarray, offsets: np.ndarray, segment_len: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Summed previous-token and induction attention [L, H] per row mean, and top-1 accuracy on the repeated half."""
    n, length = ids.shape
    positions = np.arange(1, length)
    steps = np.arange(segment_len)
    prev_sum = ind_sum = None
    correct = total = 0
    device = next(model.parameters()).device
    with _eager_attention(model):
        for start in range(0, n, batch_size):
            chunk = ids[start : start + batch_size]
            rows = np.arange(len(chunk))[:, None]
            second = offsets[start : start + batch_size, None] + segment_len
            query = second + steps  # [b, L]: every token of the second R
            key = query - segment_len + 1  # the token after its first occurrence
            batch = torch.from_numpy(chunk).to(device)
            out = model(input_ids=batch, attention_mask=torch.ones_like(batch), output_attentions=True)
            pattern = torch.stack([a.float() for a in out.attentions]).cpu().numpy()  # [L, B, H, T, T]
            prev = pattern[:, :, :, positions, positions - 1].sum(axis=(1, 3))
            # advanced indices around a slice put their broadcast shape first: [b, L_seg, layers, H]
            ind = pattern[:, rows, :, query, key].sum(axis=(0, 1))
            prev_sum = prev if prev_sum is None else prev_sum + prev
            ind_sum = ind if ind_sum is None else ind_sum + ind
            predicted = out.logits.argmax(-1).cpu().numpy()
            # positions second .. second + L - 2 predict the 2nd .. L-th token of the second R
            at = query[:, :-1]
            correct += int((predicted[rows, at] == chunk[rows, at + 1]).sum())
            total += at.size
    assert prev_sum is not None and ind_sum is not None
    return prev_sum / (n * len(positions)), ind_sum / (n * segment_len), correct / max(total, 1)


def head_scores(
    model_dir_or_hf_model: Any,
    tokenizer: Any = None,
    n: int = 200,
    segment_len: int | None = None,
    prefix_len: int = 3,
    seed: int = 12345,
    batch_size: int = 100,
    bos: bool = True,
    max_prefix_len: int | None = None,
) -> HeadScores:
    """Previous-token and induction scores of every head (see the module docstring).

    ``model_dir_or_hf_model``: a Hugging Face model directory, or a loaded causal LM (then pass its
    ``tokenizer``). ``segment_len`` defaults to the longest that fits the model's context (at most 20).
    ``bos=False`` leaves the BOS out; ``max_prefix_len`` draws each row's offset in ``prefix_len..max_prefix_len``.
    """
    model, tokenizer = _load(model_dir_or_hf_model, tokenizer)
    n_ctx = int(getattr(model.config, "n_positions", 1024))
    if segment_len is None:
        segment_len = max(2, min(20, (n_ctx - 1 - prefix_len) // 2))
    ids, offsets = repeated_random_sequences(tokenizer, n, segment_len, prefix_len, seed, bos, max_prefix_len)
    if ids.shape[1] > n_ctx:
        raise ValueError(f"sequences of {ids.shape[1]} tokens do not fit the model's {n_ctx} positions")
    was_training = model.training
    model.eval()
    try:
        prev, ind, accuracy = _pattern_scores(model, ids, offsets, segment_len, batch_size)
    finally:
        model.train(was_training)
    return HeadScores(prev, ind, n, int(ids.shape[1]), segment_len, accuracy)


GRID_HALVES = (4, 8, 12, 16, 20, 24)
"""The half lengths of the robustness grid (issue 16: 4 to 24 tokens)."""


@dataclass(frozen=True)
class GridScores:
    """Head scores over a grid of (half length, BOS or not), each cell at random offsets."""

    cells: tuple[tuple[int, bool, HeadScores], ...]
    """``(half length, bos, scores)`` per cell."""

    @property
    def previous_token_min(self) -> np.ndarray:
        """[L, H]: each head's lowest previous-token score over the cells."""
        return np.min([s.previous_token for _, _, s in self.cells], axis=0)

    @property
    def induction_min(self) -> np.ndarray:
        return np.min([s.induction for _, _, s in self.cells], axis=0)

    @property
    def previous_token_mean(self) -> np.ndarray:
        return np.mean([s.previous_token for _, _, s in self.cells], axis=0)

    @property
    def induction_mean(self) -> np.ndarray:
        return np.mean([s.induction for _, _, s in self.cells], axis=0)

    @property
    def accuracy_min(self) -> float:
        """The lowest top-1 accuracy on the repeated half over the cells."""
        return float(min(s.accuracy for _, _, s in self.cells))

    def previous_token_heads(self, threshold: float = 0.5) -> list[tuple[int, int]]:
        """Heads whose previous-token score, averaged over the grid, exceeds ``threshold``."""
        return [(int(l), int(h)) for l, h in zip(*np.nonzero(self.previous_token_mean > threshold))]

    def induction_heads(self, threshold: float = 0.5) -> list[tuple[int, int]]:
        return [(int(l), int(h)) for l, h in zip(*np.nonzero(self.induction_mean > threshold))]


def head_scores_grid(
    model_dir_or_hf_model: Any,
    tokenizer: Any = None,
    n: int = 100,
    halves: tuple[int, ...] = GRID_HALVES,
    seed: int = 12345,
    progress: Any = None,
) -> GridScores:
    """:func:`head_scores` on every half length of ``halves``, with and without BOS, each sequence's
    repeated block at a random offset (from 0 to as far as the context allows)."""
    model, tokenizer = _load(model_dir_or_hf_model, tokenizer)
    n_ctx = int(getattr(model.config, "n_positions", 1024))
    cells = []
    todo = [(half, bos) for half in halves for bos in (True, False)]
    for i, (half, bos) in enumerate(todo):
        room = n_ctx - int(bos) - 2 * half
        if room < 0:
            raise ValueError(f"halves of {half} tokens do not fit the model's {n_ctx} positions")
        scores = head_scores(
            model, tokenizer, n=n, segment_len=half, prefix_len=0, seed=seed, bos=bos, max_prefix_len=min(room, 40)
        )
        cells.append((half, bos, scores))
        if progress is not None:
            progress(i + 1, len(todo), f"half {half}, {'with' if bos else 'no'} BOS")
    return GridScores(tuple(cells))
