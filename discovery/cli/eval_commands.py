"""``circuits evaluate`` and ``circuits tasks``."""

from __future__ import annotations

import typer
from rich.table import Table

from discovery.cli import common, output
from discovery.cli.common import console
from discovery.tasks import TASKS, task_names
from discovery.types.circuit import Circuit
from discovery.types.evaluation import Ablation
from discovery.types.metrics import TASK_METRICS


def evaluate(
    circuit: list[str] = typer.Option(
        ..., "--circuit", "-c", help="components, e.g. 0.1,4.4,9.1 (repeat the option for several circuits)"
    ),
    model: str = common.ModelOpt,
    task: str = common.TaskOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    ablation: str = common.AblationOpt,
    mean_source: str = common.SourceOpt,
    ablate_mlps: bool = common.MlpsOpt,
    ablate_embed: bool = common.EmbedOpt,
    device: str = common.DeviceOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    fmt: str = output.FormatOpt,
) -> None:
    """Score circuits by ablating everything outside them; print full, ablated, circuit and normalised scores.

    ``--format csv|json``: one row per circuit, with the model, dataset and every part of the method.
    """
    output.check_format(fmt)
    chosen = Ablation.parse(ablation, mean_source, ablate_mlps, ablate_embed)
    circuits = [Circuit.parse(text) for text in circuit]
    common.check_dataset_options(task, n, task_param)  # usage errors before the model loads
    loaded = common.open_model(model, device)
    for c in circuits:
        c.validate(loaded.shape)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    evaluator = common.open_evaluator(loaded, dataset, chosen)
    with common.progress_bar("evaluating") as progress:
        scores = evaluator.evaluate(circuits, progress=progress)
    first = scores[0]
    if fmt != "table":
        rows = [
            {
                "circuit": s.circuit.canonical,
                "size": s.circuit.size,
                "n_edges": s.circuit.n_edges,
                "score": s.metric,
                "normalised": s.normalised,
                "normalised_reliable": s.reliable,
                "ratio": s.ratio,
                "full": s.full,
                "ablated": s.ablated,
                "model": loaded.identity.name,
                "weight_hash": loaded.identity.weight_hash,
                "dataset": dataset.description,
                "ablation": s.method.ablation,
                "source": s.method.source,
                "level": s.method.level,
                "ablate_mlps": s.method.ablate_mlps,
                "ablate_embed": s.method.ablate_embed,
                "metric": s.method.metric,
                "normaliser": s.method.normaliser,
            }
            for s in scores
        ]
        output.emit(rows, list(rows[0]), fmt)
        return
    console.print(f"model    {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(f"method   {first.method.describe()}")
    console.print(f"full     {first.full:.4f}")
    console.print(f"ablated  {first.ablated:.4f}")
    if not first.reliable:
        console.print(f"warning  {evaluator.base_evaluator.span_note}")
    table = Table("circuit", "size", "score", "normalised" if first.reliable else "normalised (unreliable)", "ratio")
    for s in scores:
        table.add_row(str(s.circuit), str(s.circuit.size), f"{s.metric:.4f}", f"{s.normalised:.4f}", f"{s.ratio:.4f}")
    console.print(table)


def tasks() -> None:
    """List the tasks, their corruptions and metrics."""
    table = Table("task", "corruptions (default first)", "metric", "description")
    for name in task_names():
        if name not in TASKS:
            table.add_row(name, "file", "|".join(TASK_METRICS), "prompts from a JSON or CSV file")
            continue
        t = TASKS[name]
        corruptions = [t.default_corruption] + [c for c in t.corruptions if c != t.default_corruption]
        table.add_row(name, ", ".join(corruptions), t.metric, t.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(tasks)
