"""Training and held-out data of the reference models, deterministic in an explicit numpy Generator.

Induction data (token ids over :data:`INDUCTION_WORDS`, always in their ``Ġword`` form):

- ``repeated_segment``: ``BOS x [noise] A [noise] A [noise]``: a random segment ``A`` (3-12 distinct
  words) occurs twice, at random offsets, in i.i.d. noise. The loss reads the second occurrence from
  its 2nd token on, the only part that can be predicted, and only by looking back at what followed
  the earlier occurrence. On its own this data admits shortcuts: with distinct tokens a model can
  score well from *which* tokens it has seen and roughly where (bags of tokens), with no previous-token
  or induction head (an earlier trial: 46-91% accuracy, no head with previous-token score > 0.2).
- ``chunked``: the sequence is a random concatenation of 2-5 "chunks" (fixed word strings, 2-6
  words each) with noise between them; every chunk recurs several times in random order, so its
  words are seen many times and bags of tokens say nothing about what comes next; only "the word
  that followed this word last time" does. Mixing it in (70%) is what makes textbook previous-token
  heads (layer 0) and induction heads (layer 1) appear.

Which mechanism a run finds is still sensitive to the seed and the schedule (measured on this
data, d_model 64, 4 heads, lr 1e-3, batch 64: seed 0 with 2500 steps gave a layer-0 head at 0.55
previous-token score and layer-1 heads at 0.78 induction score; the same seed with 3500 steps, or
lr 2e-3, or sinusoidal position embeddings, found a solution with no such heads at all). So the
``induction`` spec keeps the 2500-step schedule that finds them and then *polishes* at a low
learning rate (:attr:`~discovery.reference.training.ReferenceSpec.polish_steps`), which sharpens
the heads without the risk of switching mechanism; the tests check the heads, not just accuracy.

Held-out sequences (``clean=True``) draw the noise from words outside the segment, so the answer is
unambiguous. Sequence data for the ``sequences`` model is text, generated with the tasks' own
generators (:mod:`discovery.tasks`) plus variations (longer and shorter lists, continuation past the
answer, distractor sentences before the list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from discovery.reference.tokenizer import SPECIAL_TOKENS
from discovery.tasks.sequence import SequenceTask
from discovery.tasks.words import INDUCTION_WORDS as INDUCTION_WORDS  # re-exported: the induction model's vocabulary

BOS_ID = SPECIAL_TOKENS.index("<|endoftext|>")


def spaced_ids(n_words: int) -> np.ndarray:
    """Ids of the ``Ġword`` forms in a :func:`~discovery.reference.tokenizer.vocabulary` of ``n_words`` words."""
    return np.arange(n_words) + len(SPECIAL_TOKENS) + n_words


def bare_ids(n_words: int) -> np.ndarray:
    return np.arange(n_words) + len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class Batch:
    ids: np.ndarray
    """[B, T] int64 token ids."""
    loss_mask: np.ndarray
    """[B, T] bool: True where position t's *next* token (t + 1) is a training target."""


@dataclass(frozen=True)
class Segment:
    """Where the repeated segment of a ``repeated_segment`` sequence lies."""

    first: int
    second: int
    length: int


def repeated_segment(
    rng: np.random.Generator, seq_len: int, n_words: int, max_len: int = 12, clean: bool = False
) -> tuple[np.ndarray, np.ndarray, Segment]:
    """``BOS x noise A noise A noise``; mask marks positions predicting the 2nd+ token of the 2nd ``A``."""
    words = spaced_ids(n_words)
    length = int(rng.integers(3, max_len + 1))
    segment = rng.choice(words, size=length, replace=False)
    pool = np.setdiff1d(words, segment) if clean else words
    x = rng.choice(pool, size=seq_len)
    x[0] = BOS_ID
    x[1] = bare_ids(n_words)[int(rng.integers(n_words))]  # the text's first word has no space
    first = int(rng.integers(2, seq_len - 2 * length + 1))
    second = int(rng.integers(first + length, seq_len - length + 1))
    x[first : first + length] = segment
    x[second : second + length] = segment
    mask = np.zeros(seq_len, dtype=bool)
    mask[second : second + length - 1] = True  # predicts tokens second+1 .. second+length-1
    return x, mask, Segment(first, second, length)


def chunked(rng: np.random.Generator, seq_len: int, n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """A random concatenation of recurring chunks with noise; mask marks within-chunk transitions of
    chunks already seen in the sequence."""
    words = spaced_ids(n_words)
    k = int(rng.integers(2, 6))
    lengths = rng.integers(2, 7, size=k)
    tokens = rng.choice(words, size=int(lengths.sum()), replace=False)
    chunks = np.split(tokens, np.cumsum(lengths)[:-1])
    ids: list[int] = [BOS_ID, int(bare_ids(n_words)[int(rng.integers(n_words))])]
    targets: list[bool] = [False, False]
    seen: set[int] = set()
    while len(ids) < seq_len:
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 4))):
                ids.append(int(words[int(rng.integers(n_words))]))
                targets.append(False)
        c = int(rng.integers(k))
        for j, t in enumerate(chunks[c]):
            ids.append(int(t))
            targets.append(j > 0 and c in seen)
        seen.add(c)
    x = np.array(ids[:seq_len], dtype=np.int64)
    # targets[t] says token t is predictable; the loss mask sits one position earlier
    mask = np.array(targets[1:seq_len] + [False], dtype=bool)
    return x, mask


def induction_batch(
    rng: np.random.Generator, batch_size: int, seq_len: int, n_words: int, p_segment: float = 0.3
) -> Batch:
    rows, masks = [], []
    for _ in range(batch_size):
        if rng.random() < p_segment:
            x, m, _ = repeated_segment(rng, seq_len, n_words)
        else:
            x, m = chunked(rng, seq_len, n_words)
        rows.append(x)
        masks.append(m)
    return Batch(np.stack(rows).astype(np.int64), np.stack(masks))


def repeated_halves_batch(
    rng: np.random.Generator,
    batch_size: int,
    seq_len: int,
    n_words: int,
    min_half: int = 4,
    max_half: int = 24,
    p_bos: float = 0.5,
    p_gap: float = 0.3,
    max_gap: int = 6,
) -> Batch:
    """Rows ``[BOS] noise A [gap] A noise``: a half ``A`` of ``min_half..max_half`` distinct words occurs
    twice, at a random offset, directly repeated or with a gap of noise between; the mask marks
    positions predicting the 2nd+ token of the second ``A``.

    Everything a robust induction circuit must ignore is varied per row: the half's length, where it
    starts, whether a BOS is there, whether the first word is bare (as at the start of a text). The
    noise is drawn from words outside ``A``, so "the word that followed this word earlier" is the
    only way to predict the second ``A`` (bags of tokens help little: every word of ``A`` has
    already occurred once).
    """
    words = spaced_ids(n_words)
    b = np.arange(batch_size)
    bos = rng.random(batch_size) < p_bos
    start = bos.astype(np.int64)
    gap = np.where(rng.random(batch_size) < p_gap, rng.integers(1, max_gap + 1, batch_size), 0)
    longest = np.minimum(max_half, (seq_len - start - gap) // 2)
    length = (min_half + rng.random(batch_size) * (longest - min_half + 1)).astype(np.int64)
    offset = (rng.random(batch_size) * (seq_len - start - gap - 2 * length + 1)).astype(np.int64)
    perm = rng.random((batch_size, n_words)).argsort(axis=1)  # per row: the half's words first, then the rest
    # noise: uniform over each row's words outside its half
    pick = length[:, None] + (rng.random((batch_size, seq_len)) * (n_words - length)[:, None]).astype(np.int64)
    x = words[perm[b[:, None], pick]]
    t = np.arange(seq_len)[None, :]
    first = (start + offset)[:, None]
    second = first + (length + gap)[:, None]
    in_first = (t >= first) & (t < first + length[:, None])
    in_second = (t >= second) & (t < second + length[:, None])
    x = np.where(in_first, words[perm[b[:, None], np.clip(t - first, 0, n_words - 1)]], x)
    x = np.where(in_second, words[perm[b[:, None], np.clip(t - second, 0, n_words - 1)]], x)
    x[bos, 0] = BOS_ID
    bare = rng.random(batch_size) < 0.5  # a text's first word has no space
    x[b[bare], start[bare]] -= n_words
    mask = in_second & (t < second + length[:, None] - 1)
    return Batch(x.astype(np.int64), mask)


def heldout_segments(seed: int, n: int, seq_len: int, n_words: int, max_len: int = 12) -> tuple[Batch, list[Segment]]:
    """``n`` held-out repeated-segment sequences (noise disjoint from the segment)."""
    rng = np.random.default_rng([seed, 7919])
    rows, masks, segments = [], [], []
    for _ in range(n):
        x, m, s = repeated_segment(rng, seq_len, n_words, max_len=max_len, clean=True)
        rows.append(x)
        masks.append(m)
        segments.append(s)
    return Batch(np.stack(rows).astype(np.int64), np.stack(masks)), segments


# --- the sequences model's text ------------------------------------------------------------------

FILLER_WORDS: tuple[str, ...] = tuple(
    """
the a an and or but so then we you they it he she this that there here is was are were be will
can saw see said say went go came come made make took take had have with from to of on at by for
about after before again today tomorrow morning evening list count order next last first later now
red blue green small big old new good bad long short my our your their some all many few
""".split()
)


def sequence_words() -> tuple[str, ...]:
    """The ``sequences`` model's vocabulary: every word the sequence tasks can print, plus fillers."""
    from discovery.tasks.digits import DigitsTask
    from discovery.tasks.months import MonthsTask
    from discovery.tasks.number_words import NumberWordsTask
    from discovery.tasks.sequence import DONE_IN_OBJECTS

    numbers = tuple(str(i) for i in range(0, 61))
    out = numbers + DigitsTask.vocabulary + NumberWordsTask.vocabulary + MonthsTask.vocabulary
    out += DONE_IN_OBJECTS + ("done", "in", ".", ",", ":") + FILLER_WORDS
    out += tuple(w.capitalize() for w in FILLER_WORDS)
    return tuple(dict.fromkeys(out))


SEQUENCE_TASKS = ("digits", "number-words", "months")
SEQUENCE_TEMPLATES = ("plain", "done-in")


def _distractor(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 9))
    words = [FILLER_WORDS[int(i)] for i in rng.integers(len(FILLER_WORDS), size=n)]
    words[0] = words[0].capitalize()
    end = "." if rng.random() < 0.7 else (":" if rng.random() < 0.5 else ",")
    return " ".join(words) + end


def sequence_texts(rng: np.random.Generator, n: int, tokenizer: Any) -> list[str]:
    """``n`` training texts: task prompts (from the tasks' own generators) with their answer, and
    variations (continued past the answer; a distractor sentence before the list)."""
    from discovery.tasks import get_task

    texts: list[str] = []
    while len(texts) < n:
        name = SEQUENCE_TASKS[int(rng.integers(len(SEQUENCE_TASKS)))]
        template = SEQUENCE_TEMPLATES[int(rng.integers(len(SEQUENCE_TEMPLATES)))]
        vocab_size = {"digits": 50, "number-words": 12, "months": 12}[name]
        length = int(rng.integers(2, min(8, vocab_size - 1) + 1))
        task = get_task(name, length=length, template=template)
        seed = int(rng.integers(1_000_000, 2_000_000))  # held-out prompts use small seeds
        for ex in task.examples(16, seed, "repeat-last", tokenizer):
            text = ex.clean + ex.correct[0]
            if template == "done-in":
                text += "."
            else:
                # continue the list a little past the answer (stays inside the vocabulary)
                assert isinstance(task, SequenceTask)  # digits / number-words / months
                vocab = list(task.vocabulary)
                last = vocab.index(ex.correct[0].strip())
                for extra in vocab[last + 1 : last + 1 + int(rng.integers(0, 3))]:
                    text += " " + extra
            if rng.random() < 0.3:
                text = _distractor(rng) + " " + text
            texts.append(text)
    return texts[:n]
