"""``circuits patch``: path patching heatmaps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from discovery.cli import common, output
from discovery.cli.common import console
from discovery.pictures.plots import save_heatmap
from discovery.scoring.patching import Receiver, path_patching


def patch(
    receiver: str = typer.Option(
        "logits", "--receiver", "-r", help="logits, or heads' inputs: 9.6.q, 9.6 (q, k and v), 9.6.q,9.9.q"
    ),
    png: Path = typer.Option(Path("patching.png"), "--png", help="where to write the heatmap"),
    top: int = typer.Option(10, "--top", help="how many senders to list"),
    model: str = common.ModelOpt,
    task: str = common.TaskOpt,
    n: int = common.NOpt,
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    device: str = common.DeviceOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    fmt: str = output.FormatOpt,
) -> None:
    """Path patching: the effect of each sender head on the logits or on receiver heads' q/k/v inputs.

    ``--format csv|json`` prints every sender's effect (NaN: cannot send) with the dataset and receiver.
    """
    output.check_format(fmt)
    common.check_dataset_options(task, n, task_param)  # usage errors before the model loads
    loaded = common.open_model(model, device)
    parsed = Receiver.parse(receiver, loaded.shape)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    with common.progress_bar("path patching") as progress:
        result = path_patching(loaded, dataset, parsed, progress=progress)
    save_heatmap(result, png)
    _persist(loaded, dataset, result)
    if fmt != "table":
        rows = [
            {
                "sender": f"{layer}.{h}",
                "layer": layer,
                "head": h,
                "effect": float(result.effects[layer, h]),
                "receiver": result.receiver,
                "metric": result.metric,
                "clean_metric": result.clean_metric,
                "corrupt_metric": result.corrupt_metric,
                "dataset": result.dataset,
                "model": loaded.identity.name,
                "weight_hash": loaded.identity.weight_hash,
            }
            for layer in range(result.effects.shape[0])
            for h in range(result.effects.shape[1])
        ]
        output.emit(rows, list(rows[0]), fmt)
        return
    console.print(f"model     {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(f"dataset   {result.dataset}")
    console.print(f"receiver  {result.receiver}; sender patched with its value on the corrupted twin prompt")
    console.print(f"clean {result.metric} {result.clean_metric:.4f}; corrupted {result.corrupt_metric:.4f}")
    table = Table("sender", "effect (patched - clean)")
    for name, effect in result.top(top):
        table.add_row(name, f"{effect:+.4g}")
    console.print(table)
    console.print(f"heatmap   {png}")


def _persist(loaded, dataset, result) -> None:
    """Keep the heatmap's cells in the store, like every other result."""
    from discovery.store import open_store

    open_store().save_patching(result, model=loaded.identity, dataset=dataset)


def register(app: typer.Typer) -> None:
    app.command()(patch)
