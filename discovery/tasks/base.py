"""Tasks, their examples, and the tokenised dataset every evaluation runs on.

A task turns ``(n, seed, corruption, tokenizer)`` into text :class:`Example` s; :func:`build_dataset`
tokenises them and checks, once, everything the evaluator relies on:

- every clean prompt has the same token length, and its corrupted twin has that length too
  (means are taken per position, so positions must line up);
- every answer is exactly one token.

A violation raises :class:`~discovery.errors.TokenizationError` naming the prompt or answer.

The metric is a signed sum over answer tokens at the last position: ``weights[i, k]`` is +1 for a
correct token of prompt i, -1 for a wrong one, 0 otherwise. ``logit_diff`` sums weighted logits
(one correct and one wrong token per prompt: logit(correct) - logit(wrong)); ``prob_diff`` sums
weighted probabilities under the full softmax (greater-than: p(YY' > YY) - p(YY' <= YY)).
Both are averaged over prompts.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from discovery.errors import TokenizationError, UsageError

MetricName = Literal["logit_diff", "prob_diff"]


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

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params

    @classmethod
    def accepted_params(cls) -> tuple[str, ...]:
        """The parameter names this task reads: the named arguments of its ``__init__`` (a subclass
        whose ``__init__`` takes more through ``**params`` overrides this). Callers refuse any other key."""
        import inspect

        return tuple(
            name
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    @abstractmethod
    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        """``n`` examples, deterministic in ``seed``. The tokenizer lets a task skip draws that a
        model's vocabulary cannot express (greater-than years that split oddly)."""

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
    """Tokenised clean and corrupted prompts plus the metric's answer tokens."""

    spec: DatasetSpec
    examples: tuple[Example, ...]
    clean_ids: torch.Tensor
    """[n, seq] token ids of the clean prompts."""
    corrupt_ids: torch.Tensor
    """[n, seq] token ids of the corrupted prompts."""
    answer_tokens: torch.Tensor
    """[k] the distinct token ids any prompt's metric reads."""
    answer_weights: torch.Tensor
    """[n, k] +1 correct, -1 wrong, 0 unused (float32)."""
    metric: MetricName
    prompt_hash: str = field(default="")
    """sha256 of the token ids and weights: two datasets with the same hash score alike."""

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
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
        )


def metric_from_logits(dataset: Dataset, answer_logits: torch.Tensor, logsumexp: torch.Tensor | None) -> torch.Tensor:
    """Per-prompt metric from the last position's logits of the answer tokens.

    ``answer_logits``: [..., n, k] logits of ``dataset.answer_tokens``; ``logsumexp``: [..., n] the
    log partition over the whole vocabulary (needed for ``prob_diff`` only). Returns [..., n].
    """
    weights = dataset.answer_weights.to(answer_logits.dtype)
    if dataset.metric == "logit_diff":
        return (answer_logits * weights).sum(-1)
    if logsumexp is None:
        raise ValueError("prob_diff needs the log partition over the full vocabulary")
    probs = torch.exp(answer_logits - logsumexp.unsqueeze(-1))
    return (probs * weights).sum(-1)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_token(tokenizer: Any, text: str, where: str) -> int:
    ids = _encode(tokenizer, text)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TokenizationError(f"{where}: answer {text!r} is {len(ids)} tokens {pieces}, not one")
    return ids[0]


def build_dataset(
    task: Task,
    tokenizer: Any,
    n: int = 50,
    seed: int = 0,
    corruption: str | None = None,
    prepend_bos: bool = True,
) -> Dataset:
    """Generate, tokenise and check ``n`` examples of ``task``."""
    if n < 1:
        raise UsageError(f"the number of prompts must be at least 1, got {n}")
    corruption = task.check_corruption(corruption)
    examples = task.examples(n, seed, corruption, tokenizer)
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []

    clean_rows: list[list[int]] = []
    corrupt_rows: list[list[int]] = []
    for i, ex in enumerate(examples):
        clean = bos + _encode(tokenizer, ex.clean)
        corrupt = bos + _encode(tokenizer, ex.corrupt)
        if clean_rows and len(clean) != len(clean_rows[0]):
            raise TokenizationError(
                f"prompt {i} {ex.clean!r} is {len(clean) - len(bos)} tokens but prompt 0 "
                f"{examples[0].clean!r} is {len(clean_rows[0]) - len(bos)}: all prompts must have one token length"
            )
        if len(corrupt) != len(clean):
            raise TokenizationError(
                f"corrupted prompt {i} {ex.corrupt!r} is {len(corrupt) - len(bos)} tokens but its clean "
                f"prompt {ex.clean!r} is {len(clean) - len(bos)}: they must line up position by position"
            )
        clean_rows.append(clean)
        corrupt_rows.append(corrupt)

    token_index: dict[int, int] = {}
    signed: list[list[tuple[int, float]]] = []
    for i, ex in enumerate(examples):
        row = []
        for sign, answers in ((1.0, ex.correct), (-1.0, ex.wrong)):
            for text in answers:
                tok = _single_token(tokenizer, text, f"prompt {i} {ex.clean!r}")
                row.append((token_index.setdefault(tok, len(token_index)), sign))
        signed.append(row)
    weights = torch.zeros(len(examples), len(token_index))
    for i, row in enumerate(signed):
        for k, sign in row:
            weights[i, k] += sign

    clean_ids = torch.tensor(clean_rows, dtype=torch.long)
    corrupt_ids = torch.tensor(corrupt_rows, dtype=torch.long)
    answer_tokens = torch.tensor(list(token_index), dtype=torch.long)
    digest = hashlib.sha256()
    for t in (clean_ids, corrupt_ids, answer_tokens):
        digest.update(t.numpy().tobytes())
    digest.update(weights.numpy().tobytes())
    digest.update(task.metric.encode())
    spec = DatasetSpec(
        task.name,
        corruption,
        n,
        seed,
        tuple(sorted((k, _jsonable(v)) for k, v in task.params.items())),
        prepend_bos,
    )
    return Dataset(
        spec, tuple(examples), clean_ids, corrupt_ids, answer_tokens, weights, task.metric, digest.hexdigest()
    )


def _jsonable(value: Any) -> Any:
    json.dumps(value)
    return value


def pick(rng: Any, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]
