"""Tasks, their examples, and the tokenised dataset every evaluation runs on.

A task turns ``(n, seed, corruption, tokenizer)`` into text :class:`Example` s;
:func:`~discovery.tasks.building.build_dataset` tokenises them and checks, once, everything the evaluator relies on:

- every clean prompt has the same token length, and its corrupted twin has that length too
  (means are taken per position, so positions must line up);
- every answer is exactly one token (an answer a tokenizer splits, e.g. Llama's and Qwen's digits,
  is an error naming the prompt and the pieces);
- no prompt or answer contains the tokenizer's unknown token (a word outside a word-level
  vocabulary would otherwise be scored as ``<unk>``).

A violation raises :class:`~discovery.types.errors.TokenizationError` naming the prompt or answer. Oddities
that are not errors (answers without the leading space the other answers have) are returned in
:attr:`Dataset.warnings` for the caller to show; the library prints nothing.

Any task can keep only the prompts the model answers correctly (``filter=correct``, see
:mod:`discovery.tasks.filtering`); the filtered-out count is recorded in the dataset's parameters.

The metric is a signed sum over answer tokens at the last position: ``weights[i, k]`` is +1 for a
correct token of prompt i, -1 for a wrong one, 0 otherwise. ``logit_diff`` sums weighted logits
(one correct and one wrong token per prompt: logit(correct) - logit(wrong)); ``prob_diff`` sums
weighted probabilities under the full softmax (greater-than: p(YY' > YY) - p(YY' <= YY)).
Both are averaged over prompts. The readout of every metric lives in :mod:`discovery.scoring.metrics`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from discovery.types.errors import TokenizationError, UsageError
from discovery.types.metrics import MetricName

FILTERS = ("none", "correct")
"""``filter`` task parameter: keep every prompt, or only those the model answers correctly."""


@dataclass(frozen=True)
class Example:
    """One clean prompt, its corrupted twin, and the answer tokens the metric reads."""

    clean: str
    corrupt: str
    correct: tuple[str, ...]
    """Token strings counted as correct, e.g. (" 5",)."""
    wrong: tuple[str, ...]
    """Token strings counted against, e.g. (" 4",) for the last member repeated."""


class Task(ABC):
    """A behaviour to find a circuit for. Subclasses live one per module in ``discovery.tasks``."""

    name: ClassVar[str]
    description: ClassVar[str]
    corruptions: ClassVar[tuple[str, ...]]
    default_corruption: ClassVar[str]
    metric: ClassVar[MetricName] = "logit_diff"
    metric_function: Callable[..., torch.Tensor] | None = None
    """The function a task file names for its metric (``metrics.py:fn``), carried to the dataset and
    registered under ``metric`` when an evaluator is built (:func:`discovery.scoring.metrics.check_metric`)."""

    default_prepend_bos: ClassVar[bool] = True
    """Whether the tokenised prompts start with the tokenizer's BOS token unless the caller says."""

    def __init__(self, **params: Any) -> None:
        if params.get("filter", "none") not in FILTERS:
            raise UsageError(
                f"task {self.name!r}: unknown filter {params['filter']!r}; choose one of: {', '.join(FILTERS)}"
            )
        if params.get("filter") == "none":
            params = {k: v for k, v in params.items() if k != "filter"}  # the default: not part of the identity
        self.params: dict[str, Any] = params

    @classmethod
    def accepted_params(cls) -> tuple[str, ...]:
        """The parameter names this task reads: the named arguments of its ``__init__`` (a subclass
        whose ``__init__`` takes more through ``**params`` overrides this). Callers refuse any other key."""
        import inspect

        own = tuple(
            name
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        return (*own, "filter")  # every task takes the model-correctness filter

    @property
    def filter(self) -> str:
        return str(self.params.get("filter", "none"))

    @property
    def prepend_bos(self) -> bool:
        return self.default_prepend_bos

    @abstractmethod
    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        """``n`` examples, deterministic in ``seed``. The tokenizer lets a task skip draws that a
        model's vocabulary cannot express (greater-than years that split oddly)."""

    def candidates(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        """The first ``n`` prompts of the stream the correctness filter draws from. It must be
        prefix-stable (``candidates(m)[:n] == candidates(n)`` for m > n); ``examples`` is, for
        every task that draws its prompts one after another."""
        return self.examples(n, seed, corruption, tokenizer)

    def max_candidates(self, n: int) -> int:
        """How far the filter may look for ``n`` passing prompts."""
        return max(64 * n, 1024)

    def select(self, passing: Sequence[bool], n: int) -> tuple[list[int], int] | None:
        """Which candidates make the dataset, given which pass the filter: ``(indices, considered)``
        with ``considered`` the length of the candidate prefix used, or None if too few pass.
        Default: the first ``n`` that pass."""
        chosen = [i for i, ok in enumerate(passing) if ok][:n]
        return (chosen, chosen[-1] + 1) if len(chosen) == n else None

    def check_corruption(self, corruption: str | None) -> str:
        corruption = corruption or self.default_corruption
        if corruption not in self.corruptions:
            raise UsageError(
                f"task {self.name!r} has no corruption {corruption!r}; choose one of: {', '.join(self.corruptions)}"
            )
        return corruption


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset, given the tokenizer."""

    task: str
    corruption: str
    n: int
    seed: int
    params: tuple[tuple[str, Any], ...] = ()
    prepend_bos: bool = True

    def describe(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.params)
        return f"{self.task}[corruption={self.corruption},n={self.n},seed={self.seed}{extra}]"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Tokenised clean and corrupted prompts plus the metric's answer tokens.

    Prompts of several token lengths (IOI-style files whose names tokenise differently) are grouped
    by length: the dataset then holds one equal-length :class:`Dataset` per length in ``groups``
    (in order of first appearance, sharing ``answer_tokens``), and its own id tensors are empty
    ``[n, 0]``. Every forward runs group by group, so positions line up within a group and the
    mean ablation's per-position means are taken over the group's own corrupted prompts; a metric
    is the mean over all prompts (each group weighted by its prompt count).
    """

    spec: DatasetSpec
    examples: tuple[Example, ...]
    clean_ids: torch.Tensor
    """[n, seq] token ids of the clean prompts ([n, 0] when the prompts have several lengths)."""
    corrupt_ids: torch.Tensor
    """[n, seq] token ids of the corrupted prompts ([n, 0] when the prompts have several lengths)."""
    answer_tokens: torch.Tensor
    """[k] the distinct token ids any prompt's metric reads."""
    answer_weights: torch.Tensor
    """[n, k] +1 correct, -1 wrong, 0 unused (float32)."""
    metric: MetricName
    prompt_hash: str = field(default="")
    """sha256 of the token ids and weights: two datasets with the same hash score alike."""
    warnings: tuple[str, ...] = ()
    """Things a user should see that are not errors (the CLI prints them), e.g. an answer without
    the leading space every other answer has."""
    groups: tuple[Dataset, ...] = ()
    """One equal-length dataset per prompt length when the prompts have several (else empty)."""
    metric_function: Callable[..., torch.Tensor] | None = None
    """The task's own metric function (a task file's ``metrics.py:fn``), else None: see :attr:`Task.metric_function`."""

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def mixed_lengths(self) -> bool:
        return bool(self.groups)

    @property
    def length_groups(self) -> tuple[Dataset, ...]:
        """The equal-length datasets every forward runs on: the groups, or this dataset itself."""
        return self.groups or (self,)

    @property
    def seq_len(self) -> int:
        """Tokens per prompt; with several lengths, the longest (what must fit the model's context)."""
        if self.groups:
            return max(g.seq_len for g in self.groups)
        return int(self.clean_ids.shape[1])

    @property
    def description(self) -> str:
        return self.spec.describe()

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.spec,
            self.examples,
            self.clean_ids.to(device),
            self.corrupt_ids.to(device),
            self.answer_tokens.to(device),
            self.answer_weights.to(device),
            self.metric,
            self.prompt_hash,
            self.warnings,
            tuple(g.to(device) for g in self.groups),
            self.metric_function,
        )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The parts of ``text`` the tokenizer maps to its unknown token (empty if none or no unk token)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    # GPT-2's "unknown" token is its <|endoftext|> (BOS/EOS): byte-level BPE never produces it for text
    if unk is None or unk in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        ids = _encode(tokenizer, text)
        return [str(tokenizer.unk_token)] * ids.count(unk)
    return [
        text[a:b].strip() or repr(text[a:b]) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk
    ]


def _check_known(tokenizer: Any, text: str, where: str) -> None:
    unknown = _unknown_words(tokenizer, text)
    if unknown:
        words = ", ".join(repr(w) for w in dict.fromkeys(unknown))
        raise TokenizationError(
            f"{where}: {words} {'is' if len(set(unknown)) == 1 else 'are'} not in the model's vocabulary "
            f"(tokenised to the unknown token {tokenizer.unk_token!r}); a score over it would mean nothing"
        )


def _single_token(tokenizer: Any, text: str, where: str) -> int:
    _check_known(tokenizer, text, f"{where}: answer {text!r}")
    ids = _encode(tokenizer, text)
    if len(ids) != 1:
        raise TokenizationError(
            f"{where}: answer {text!r} is {len(ids)} tokens {_pieces(tokenizer, ids)} for this tokenizer, not one"
        )
    return ids[0]


def _spacing_warning(examples: Sequence[Example]) -> str | None:
    """A warning when some answers lack the leading space most answers have (a file typo that
    silently scores a different token: ``"5"`` instead of ``" 5"``)."""
    answers = [(i, a) for i, ex in enumerate(examples) for a in ex.correct + ex.wrong]
    spaced = [a for _, a in answers if a.startswith(" ")]
    bare = [(i, a) for i, a in answers if not a.startswith(" ")]
    if not spaced or not bare or len(bare) >= len(spaced):
        return None
    shown = ", ".join(f"prompt {i} {a!r}" for i, a in bare[:3]) + (" ..." if len(bare) > 3 else "")
    return (
        f"{len(bare)} answer{'s' if len(bare) > 1 else ''} without the leading space the other "
        f"{len(spaced)} have ({shown}): each scores a different token than ' ' + answer"
    )


@dataclass(frozen=True)
class _Tokenised:
    clean: list[list[int]]
    corrupt: list[list[int]]
    answers: list[list[tuple[int, float]]]
    """Per prompt: (token id, +1 correct / -1 wrong)."""


def _tokenise(examples: Sequence[Example], tokenizer: Any, bos: list[int], offset: int = 0) -> _Tokenised:
    """Tokenise and check examples (numbered from ``offset`` in messages). Prompts may differ in
    length (the dataset groups them); a corrupted prompt must have its clean prompt's length."""
    clean_rows: list[list[int]] = []
    corrupt_rows: list[list[int]] = []
    answers: list[list[tuple[int, float]]] = []
    for j, ex in enumerate(examples):
        i = offset + j
        where = f"prompt {i} {ex.clean!r}"
        row = [
            (_single_token(tokenizer, text, where), sign)
            for sign, texts in ((1.0, ex.correct), (-1.0, ex.wrong))
            for text in texts
        ]
        _check_known(tokenizer, ex.clean, where)
        _check_known(tokenizer, ex.corrupt, f"corrupted prompt {i} {ex.corrupt!r}")
        clean = bos + _encode(tokenizer, ex.clean)
        corrupt = bos + _encode(tokenizer, ex.corrupt)
        if not clean:
            raise TokenizationError(f"{where}: the prompt is empty and no BOS token is prepended")
        if len(corrupt) != len(clean):
            raise TokenizationError(
                f"corrupted prompt {i} {ex.corrupt!r} is {len(corrupt) - len(bos)} tokens but its clean "
                f"prompt {ex.clean!r} is {len(clean) - len(bos)}: they must line up position by position "
                f"(pieces {_pieces(tokenizer, corrupt[len(bos) :])} and {_pieces(tokenizer, clean[len(bos) :])})"
            )
        clean_rows.append(clean)
        corrupt_rows.append(corrupt)
        answers.append(row)
    return _Tokenised(clean_rows, corrupt_rows, answers)


def _jsonable(value: Any) -> Any:
    json.dumps(value)
    return value


def pick(rng: Any, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]
