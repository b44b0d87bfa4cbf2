"""``circuits train-reference`` and ``circuits heads``: the reference models and their ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from discovery.cli import common
from discovery.cli.common import console
from discovery.types.errors import UsageError


def train_reference(
    name: str = typer.Argument(..., help="reference model: induction, sequences, planted-chains or planted-wide"),
    out: Path | None = typer.Option(None, "--out", help="write the model here (default: the cache that ref:NAME uses)"),
    seed: int = typer.Option(0, "--seed", help="training seed (weights and data)"),
) -> None:
    """Train a reference model (a few minutes on a CPU; a planted one is built in seconds) and print its accuracy."""
    from discovery.reference import TrainingReport, ensure_reference_model, get_spec, reference_dir
    from discovery.reference import train_reference as train

    spec = get_spec(name)
    with common.progress_bar(f"training {name}", transient=True) as progress:
        if out is not None:
            report = train(name, out, seed=seed, progress=progress)
            cached = False
        else:
            cached = (reference_dir(name, seed) / "reference.json").is_file()
            # the cache's copy, never the package's shipped one (which ref:NAME keeps loading)
            directory = ensure_reference_model(name, progress=progress, seed=seed, shipped=False)
            record = json.loads((directory / "reference.json").read_text())
            report = TrainingReport(
                name=record["name"],
                seed=record["seed"],
                steps=record["steps"],
                seconds=record["seconds"],
                heldout_accuracy=record["heldout_accuracy"],
                out_dir=directory,
                final_loss=record.get("final_loss", float("nan")),
                targets=record.get("targets", {}),
            )
    console.print(
        f"model      {report.name} (seed {report.seed}){'  [already trained, from the cache]' if cached else ''}"
    )
    console.print(f"steps      {report.steps}")
    console.print(f"seconds    {report.seconds:.1f}")
    console.print(f"final loss {report.final_loss:.4f}")
    table = Table("held-out task", "top-1 accuracy", "target")
    for task, acc in report.heldout_accuracy.items():
        target = spec.targets.get(task)
        table.add_row(task, f"{acc:.3f}", "" if target is None else f">= {target:.2f}")
    console.print(table)
    console.print(f"directory  {report.out_dir}")
    if not report.meets_targets:
        console.print("warning: the model is below its accuracy target", style="yellow")


def heads(
    model: str = typer.Option("ref:induction", "--model", "-m", help="local HF directory or ref:NAME"),
    png: Path = typer.Option(Path("heads.png"), "--png", help="where to write the heatmap"),
    n: int = typer.Option(100, "--n", help="repeated random sequences per grid cell"),
    threshold: float = typer.Option(0.5, "--threshold", help="grid-mean score above which a head is listed"),
    device: str = common.DeviceOpt,
) -> None:
    """Previous-token and induction scores of every head, from attention patterns (no ablation).

    Measured over a grid: halves of 4 to 24 repeated random words, with and without BOS, each
    sequence at a random offset; the tables show each head's worst cell and its mean.
    """
    from discovery.reference.ground_truth import head_scores_grid

    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    loaded = common.open_model(model, device)
    with common.progress_bar("attention patterns over the grid", transient=True) as progress:
        grid = head_scores_grid(loaded.hf_model, loaded.tokenizer, n=n, progress=progress)
    first = grid.cells[0][2]
    n_layers, n_heads = first.n_layers, first.n_heads
    for title, worst, mean in (
        ("previous-token score", grid.previous_token_min, grid.previous_token_mean),
        ("induction score", grid.induction_min, grid.induction_mean),
    ):
        table = Table(title=f"{title}, worst cell / mean over the grid (layer x head)")
        table.add_column("layer")
        for h in range(n_heads):
            table.add_column(f"h{h}", justify="right")
        for layer in range(n_layers):
            table.add_row(str(layer), *[f"{worst[layer, h]:.2f} / {mean[layer, h]:.2f}" for h in range(n_heads)])
        console.print(table)
    prev_heads = grid.previous_token_heads(threshold)
    ind_heads = grid.induction_heads(threshold)
    cells = Table(title="per grid cell (random offsets)")
    for col in ("half", "BOS", "previous-token heads (min)", "induction heads (min)", "top-1 on repeated half"):
        cells.add_column(col, justify="right")
    for half, bos, scores in grid.cells:
        prev = min((float(scores.previous_token[l, h]) for l, h in prev_heads), default=float("nan"))
        ind = min((float(scores.induction[l, h]) for l, h in ind_heads), default=float("nan"))
        cells.add_row(str(half), "yes" if bos else "no", f"{prev:.2f}", f"{ind:.2f}", f"{scores.accuracy:.3f}")
    console.print(cells)
    fmt = ", ".join(f"{l}.{h}" for l, h in prev_heads) or "none"
    console.print(f"previous-token heads (grid mean > {threshold}): {fmt}")
    fmt = ", ".join(f"{l}.{h}" for l, h in ind_heads) or "none"
    console.print(f"induction heads (grid mean > {threshold}): {fmt}")
    console.print(f"top-1 on the repeated half: worst cell {grid.accuracy_min:.3f}")
    _heatmap(grid.previous_token_min, grid.induction_min, png, f"{model}: worst grid cell")
    console.print(f"heatmap    {png}")


def _heatmap(previous: Any, induction: Any, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_heads = previous.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * n_heads * 2, 1.5 + 0.6 * n_layers), squeeze=False)
    for ax, values, label in zip(axes[0], (previous, induction), ("previous-token", "induction")):
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(f"{label} score")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        for layer in range(n_layers):
            for h in range(n_heads):
                v = float(values[layer, h])
                ax.text(
                    h, layer, f"{v:.2f}", ha="center", va="center", color="black" if v > 0.5 else "white", fontsize=8
                )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("train-reference")(train_reference)
    app.command()(heads)
