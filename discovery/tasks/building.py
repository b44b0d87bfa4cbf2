"""Building a task's dataset: generate, (optionally) filter by the model's answers, tokenise, check.

Apart from :mod:`.base` so that the correctness filter (:mod:`.filtering`), which builds on the
base classes, is imported here rather than from inside them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from discovery.tasks.base import Dataset, DatasetSpec, Task, _jsonable, _spacing_warning, _tokenise
from discovery.tasks.filtering import filter_candidates
from discovery.types.errors import UsageError


def build_dataset(
    task: Task,
    tokenizer: Any,
    n: int = 50,
    seed: int = 0,
    corruption: str | None = None,
    prepend_bos: bool | None = None,
    model: Any = None,
    progress: Any = None,
) -> Dataset:
    """Generate, tokenise and check ``n`` examples of ``task``.

    ``prepend_bos`` defaults to the task's own setting (Lan & Barez's tasks: no BOS, as in their
    code). ``model`` (a :class:`~discovery.model.LoadedModel`) is needed only for a task built with
    ``filter=correct``: candidates are drawn until ``n`` of them pass (the first ``n``, or the
    task's own selection rule), and ``filtered_out`` / ``candidates`` join the dataset's
    parameters. ``progress(done, total, message)`` reports the filter's forward passes.
    """
    if n < 1:
        raise UsageError(f"the number of prompts must be at least 1, got {n}")
    corruption = task.check_corruption(corruption)
    bos_on = task.prepend_bos if prepend_bos is None else prepend_bos
    bos = [tokenizer.bos_token_id] if bos_on and tokenizer.bos_token_id is not None else []
    extra: list[tuple[str, Any]] = []
    if task.filter == "none":
        examples = task.examples(n, seed, corruption, tokenizer)
        tok = _tokenise(examples, tokenizer, bos)
    else:
        if model is None:
            raise UsageError(
                f"task {task.name!r} with filter={task.filter} keeps the prompts the model answers correctly, "
                "so building it needs the model (build_dataset(..., model=...))"
            )
        examples, tok, considered = filter_candidates(task, model, tokenizer, bos, n, seed, corruption, progress)
        extra = [("candidates", considered), ("filtered_out", considered - n)]

    token_index: dict[int, int] = {}
    signed = [[(token_index.setdefault(t, len(token_index)), sign) for t, sign in row] for row in tok.answers]
    weights = torch.zeros(len(examples), len(token_index))
    for i, row in enumerate(signed):
        for k, sign in row:
            weights[i, k] += sign

    answer_tokens = torch.tensor(list(token_index), dtype=torch.long)
    params = sorted((k, _jsonable(v)) for k, v in task.params.items()) + extra
    spec = DatasetSpec(task.name, corruption, n, seed, tuple(params), bos_on)
    warning = _spacing_warning(examples)
    warnings = (warning,) if warning else ()
    lengths = list(dict.fromkeys(len(row) for row in tok.clean))
    if len(lengths) == 1:
        clean_ids = torch.tensor(tok.clean, dtype=torch.long)
        corrupt_ids = torch.tensor(tok.corrupt, dtype=torch.long)
        digest = _digest([clean_ids, corrupt_ids, answer_tokens], weights, task.metric)
        return Dataset(
            spec,
            tuple(examples),
            clean_ids,
            corrupt_ids,
            answer_tokens,
            weights,
            task.metric,
            digest,
            warnings,
            metric_function=task.metric_function,
        )
    # several lengths: one equal-length group per length (see Dataset), hashed over every row in order
    groups = []
    for length in lengths:
        rows = [i for i, row in enumerate(tok.clean) if len(row) == length]
        g_clean = torch.tensor([tok.clean[i] for i in rows], dtype=torch.long)
        g_corrupt = torch.tensor([tok.corrupt[i] for i in rows], dtype=torch.long)
        g_weights = weights[rows]
        g_examples = tuple(examples[i] for i in rows)
        g_digest = _digest([g_clean, g_corrupt, answer_tokens], g_weights, task.metric)
        groups.append(
            Dataset(
                spec,
                g_examples,
                g_clean,
                g_corrupt,
                answer_tokens,
                g_weights,
                task.metric,
                g_digest,
                metric_function=task.metric_function,
            )
        )
    rows_in_order = [torch.tensor(r, dtype=torch.long) for pair in zip(tok.clean, tok.corrupt) for r in pair]
    digest = _digest([*rows_in_order, answer_tokens], weights, task.metric)
    empty = torch.zeros(len(examples), 0, dtype=torch.long)
    return Dataset(
        spec,
        tuple(examples),
        empty,
        empty.clone(),
        answer_tokens,
        weights,
        task.metric,
        digest,
        warnings,
        tuple(groups),
        task.metric_function,
    )


def _digest(tensors: list[torch.Tensor], weights: torch.Tensor, metric: str) -> str:
    """sha256 of the token ids, the answer weights and the metric: datasets with one digest score alike."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.numpy().tobytes())
    digest.update(weights.numpy().tobytes())
    digest.update(metric.encode())
    return digest.hexdigest()
