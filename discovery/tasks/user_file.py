"""User-defined tasks from a prompt file: ``--task file:PATH`` (JSON or CSV).

JSON: a list of objects, or ``{"examples": [...]}``; CSV: a header row. Each example has
``clean``, ``corrupt``, ``answer`` and ``wrong`` (a token string each, e.g. " 5", or a list of
token strings for several). The optional top-level JSON key ``metric`` picks ``logit_diff``
(default), ``prob_diff``, a registered user metric, or ``FILE.py:FUNCTION`` (a Python file beside
the task file; the function, ``metric(logits, dataset) -> values per prompt``, becomes the task's
metric under its name; see :mod:`discovery.scoring.metrics`). The task only reads the file and keeps
the function (:attr:`~discovery.tasks.base.Task.metric_function`, carried by the dataset): the
registry of metrics is in :mod:`discovery.scoring.metrics`, above the tasks, which registers it when
an evaluator is built, and checks there that a bare name is registered. ``n`` takes the first n examples in
file order (after a shuffle with ``seed`` when seed is not 0); the file's own corruption is called ``file``.
The prompts are tokenised after the BOS token unless ``bos=false`` (``circuits prompts --json`` of a task without a
BOS token, e.g. Lan & Barez's, reads back with ``--task-param bos=false``). Prompts may have
different token lengths (IOI-style names that split differently): the dataset groups them by
length, and each corrupted prompt must have its clean prompt's length (see
:class:`~discovery.tasks.base.Dataset`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from discovery.tasks.base import Example, Task
from discovery.types.errors import UsageError
from discovery.types.metrics import BUILTIN_METRICS, TASK_METRICS, check_user_metric_name

REQUIRED = ("clean", "corrupt", "answer", "wrong")


def _tokens(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


class FileTask(Task):
    name = "file"
    description = "prompts, corrupted prompts and answers from a JSON or CSV file"
    corruptions = ("file",)
    default_corruption = "file"

    def __init__(self, path: str, bos: bool | None = None, **params: Any) -> None:
        if bos is not None and not isinstance(bos, bool):
            raise UsageError(f"task file: bos must be true or false, got {bos!r}")
        if bos is not None:
            params["bos"] = bos  # recorded only when given: files without it keep their identity
        super().__init__(path=str(path), **params)
        self.bos = True if bos is None else bos
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"task file {str(self.path)!r} does not exist")
        rows, metric = self._read()
        if ":" in str(metric):
            metric = self._load_metric(str(metric))
        elif metric not in TASK_METRICS and (metric in BUILTIN_METRICS or not str(metric).isidentifier()):
            raise UsageError(
                f"task file {self.path}: unknown metric {metric!r} ({', '.join(TASK_METRICS)}, a registered "
                "metric, or FILE.py:FUNCTION)"
            )
        self.metric = metric  # type: ignore[misc]
        self.rows = rows
        self.name = f"file:{self.path.name}"  # type: ignore[misc]

    def _load_metric(self, spec: str) -> str:
        """``metrics.py:name`` (relative to the task file): the function ``name`` of that Python file,
        kept as :attr:`metric_function` (registered as the metric ``name`` when an evaluator is built).
        The file is the user's own code and runs here."""
        import importlib.util

        file, _, function = spec.rpartition(":")
        path = (self.path.parent / file).resolve()
        if not path.is_file() or path.suffix != ".py":
            raise UsageError(f"task file {self.path}: metric {spec!r}: {str(path)!r} is not a Python file")
        module_spec = importlib.util.spec_from_file_location(f"circuits_metric_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        fn = getattr(module, function, None)
        if not callable(fn):
            raise UsageError(f"task file {self.path}: metric {spec!r}: {path.name} has no function {function!r}")
        self.metric_function = fn
        return check_user_metric_name(function)

    def _read(self) -> tuple[list[dict[str, Any]], str]:
        text = self.path.read_text()
        metric = "logit_diff"
        if self.path.suffix.lower() == ".csv":
            rows: list[dict[str, Any]] = list(csv.DictReader(text.splitlines()))
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"task file {self.path}: not valid JSON ({e})") from e
            if isinstance(data, dict):
                metric = data.get("metric", metric)
                data = data.get("examples")
            if not isinstance(data, list):
                raise UsageError(f"task file {self.path}: expected a list of examples")
            rows = data
        if not rows:
            raise UsageError(f"task file {self.path}: no examples")
        for i, row in enumerate(rows):
            missing = [k for k in REQUIRED if k not in row or row[k] in (None, "")]
            if missing:
                raise UsageError(f"task file {self.path}: example {i} lacks {', '.join(missing)}")
        return rows, metric

    @property
    def prepend_bos(self) -> bool:
        return self.bos

    def candidates(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        return self.examples(min(n, len(self.rows)), seed, corruption, tokenizer)

    def max_candidates(self, n: int) -> int:
        return len(self.rows)

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        order = np.arange(len(self.rows))
        if seed:
            order = np.random.default_rng(seed).permutation(len(self.rows))
        if n > len(self.rows):
            raise UsageError(f"task file {self.path}: asked for {n} prompts, the file has {len(self.rows)}")
        return [
            Example(str(r["clean"]), str(r["corrupt"]), _tokens(r["answer"]), _tokens(r["wrong"]))
            for r in (self.rows[int(i)] for i in order[:n])
        ]
