"""Options and builders every command shares: one place that turns CLI words into library objects."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console

from discovery.model import LoadedModel
from discovery.scoring.build import build_evaluator, task_dataset
from discovery.scoring.scorer import Scorer
from discovery.tasks import Dataset
from discovery.types.errors import UsageError
from discovery.types.evaluation import ABLATION_KINDS, Ablation


def _width(stream: Any) -> int | None:
    """Outside a terminal rich would squeeze every table into 80 columns; give tables their natural width."""
    return None if getattr(stream, "isatty", lambda: False)() else 100_000


# markup off: data such as "digits[corruption=...]" must print as written
console = Console(markup=False, highlight=False, soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

DEFAULT_MODEL = os.environ.get("CIRCUITS_MODEL", "ref:sequences")

ModelOpt = typer.Option(
    DEFAULT_MODEL, "--model", "-m", help="local HF directory, hub name (gpt2), or ref:NAME (a trained reference model)"
)
TaskOpt = typer.Option("digits", "--task", "-t", help="task name, or file:PATH for a prompt file")
NOpt = typer.Option(50, "--n", help="number of prompts")
SeedOpt = typer.Option(0, "--seed", help="seed of the prompt generator")
CorruptionOpt = typer.Option(None, "--corruption", help="corruption (default: the task's own)")
AblationOpt = typer.Option("mean", "--ablation", help=f"one of {', '.join(ABLATION_KINDS)}")
SourceOpt = typer.Option("corrupt", "--mean-source", help="prompts the replacement values come from: corrupt or clean")
MlpsOpt = typer.Option(False, "--ablate-mlps", help="also ablate MLPs outside the circuit (default: keep every MLP)")
EmbedOpt = typer.Option(
    False, "--ablate-embed", help="edge circuits: the embedding's edges are ablatable too (default: always kept)"
)
# search commands: unset means the method's own default (`circuits methods` lists them)
MethodAblationOpt = typer.Option(
    None, "--ablation", help=f"one of {', '.join(ABLATION_KINDS)} (default: the method's; acdc resample, others mean)"
)
MethodMlpsOpt = typer.Option(
    None, "--ablate-mlps/--keep-mlps", help="ablate MLPs outside the circuit (default: the method's; acdc ablates)"
)
MethodEmbedOpt = typer.Option(
    None,
    "--ablate-embed/--keep-embed",
    help="edge methods: the embedding's edges are prunable (default: the method's; acdc prunes them)",
)
DeviceOpt = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, auto")
TaskParamOpt = typer.Option(
    None, "--task-param", help="task parameter KEY=VALUE (e.g. length=5, template=done-in); repeatable"
)


DbOpt = typer.Option(None, "--db", help="store URL (default: CIRCUITS_DATABASE_URL, else the embedded SQLite file)")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``--param KEY=VALUE`` items as strings (the method's declared schema coerces them); the same for
    ``discover`` and ``submit``. A dash in a key is read as an underscore (``max-size`` = ``max_size``)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r}: write KEY=VALUE, e.g. --param max_size=10")
        name = key.strip().replace("-", "_")
        if name in params:
            raise UsageError(f"--param {name} given twice")
        params[name] = value.strip()
    return params


def parse_task_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--task-param {item!r}: write KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def store_enabled() -> bool:
    """False when ``CIRCUITS_NO_STORE=1``: commands then neither read nor write the store."""
    return os.environ.get("CIRCUITS_NO_STORE", "").strip().lower() not in ("1", "true", "yes")


@contextlib.contextmanager
def progress_bar(description: str, transient: bool = True) -> Iterator[Any]:
    """A library progress callback ``(done, total, message)``: a rich bar with ETA on a terminal, timestamped
    log lines on stderr otherwise (see :mod:`discovery.cli.progress`)."""
    from discovery.cli.progress import progress

    with progress(description, err_console, transient) as callback:
        yield callback


def open_model(spec: str, device: str = "cpu") -> LoadedModel:
    from discovery.reference import load_model

    with progress_bar(f"loading {spec}") as progress:
        return load_model(spec, device=device, progress=progress)


def check_dataset_options(task: str, n: int, task_params: list[str] | None = None) -> dict[str, Any]:
    """Refuse bad dataset options before anything slow runs (a model loading); the parsed task params."""
    from discovery.service.requests import MAX_PROMPTS, check_task_params

    if not 1 <= n <= MAX_PROMPTS:
        raise UsageError(f"--n {n}: the number of prompts must be between 1 and {MAX_PROMPTS:,}")
    params = parse_task_params(task_params)
    check_task_params(task, params)
    return params


def open_dataset(
    model: LoadedModel, task: str, n: int, seed: int, corruption: str | None, task_params: list[str] | None = None
) -> Dataset:
    params = check_dataset_options(task, n, task_params)
    with progress_bar(f"prompts for {task}") as progress:
        dataset = task_dataset(model, task, n, seed, corruption, params, progress)
    for warning in dataset.warnings:
        err_console.print(f"warning: {warning}")
    filtered = dict(dataset.spec.params).get("filtered_out")
    if filtered is not None:
        err_console.print(f"filter=correct dropped {filtered} of {filtered + dataset.n} candidate prompts")
    return dataset


def open_evaluator(model: LoadedModel, dataset: Dataset, ablation: Ablation, store: bool | None = None) -> Scorer:
    """The evaluator, wrapped in a StoredEvaluator on the default store (``CIRCUITS_DATABASE_URL``, else the
    embedded SQLite file): every score is persisted and a stored one costs no forward pass.
    ``store=False``, or ``CIRCUITS_NO_STORE=1`` in the environment, gives the bare evaluator."""
    evaluator = build_evaluator(model, dataset, ablation)
    if store is None:
        store = store_enabled()
    if not store:
        return evaluator
    from discovery.scoring.stored import StoredEvaluator
    from discovery.store import open_store

    return StoredEvaluator(evaluator, open_store())
