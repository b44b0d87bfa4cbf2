"""``circuits train-reference`` and ``circuits heads``: the reference models and their ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from discovery.cli import common
from discovery.cli.common import console


def train_reference(
    name: str = typer.Argument(..., help="reference model: induction or sequences"),
    out: Path | None = typer.Option(None, "--out", help="write the model here (default: the cache that ref:NAME uses)"),
    seed: int = typer.Option(0, "--seed", help="training seed (weights and data)"),
) -> None:
    """Train a reference model (a few minutes on a CPU) and print its held-out accuracy."""
    from discovery.reference import TrainingReport, ensure_reference_model, get_spec, reference_dir
    from discovery.reference import train_reference as train

    spec = get_spec(name)
    with common.progress_bar(f"training {name}", transient=True) as progress:
        if out is not None:
            report = train(name, out, seed=seed, progress=progress)
            cached = False
        else:
            cached = (reference_dir(name, seed) / "reference.json").is_file()
            directory = ensure_reference_model(name, progress=progress, seed=seed)
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
    n: int = typer.Option(200, "--n", help="number of repeated random sequences"),
    threshold: float = typer.Option(0.5, "--threshold", help="score above which a head is listed"),
    device: str = common.DeviceOpt,
) -> None:
    """Previous-token and induction scores of every head, from attention patterns (no ablation)."""
    from discovery.reference.ground_truth import head_scores

    loaded = common.open_model(model, device)
    scores = head_scores(loaded.hf_model, loaded.tokenizer, n=n)
    for title, values in (("previous-token score", scores.previous_token), ("induction score", scores.induction)):
        table = Table(title=f"{title} (layer x head)")
        table.add_column("layer")
        for h in range(scores.n_heads):
            table.add_column(f"h{h}", justify="right")
        for layer in range(scores.n_layers):
            table.add_row(str(layer), *[f"{v:.2f}" for v in values[layer]])
        console.print(table)
    fmt = ", ".join(f"{l}.{h}" for l, h in scores.previous_token_heads(threshold)) or "none"
    console.print(f"previous-token heads (> {threshold}): {fmt}")
    fmt = ", ".join(f"{l}.{h}" for l, h in scores.induction_heads(threshold)) or "none"
    console.print(f"induction heads (> {threshold}): {fmt}")
    _heatmap(scores, png, model)
    console.print(f"heatmap    {png}")


def _heatmap(scores, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * scores.n_heads * 2, 1.5 + 0.6 * scores.n_layers), squeeze=False)
    for ax, values, label in zip(axes[0], (scores.previous_token, scores.induction), ("previous-token", "induction")):
        im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(f"{label} score")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(scores.n_heads))
        ax.set_yticks(range(scores.n_layers))
        for layer in range(scores.n_layers):
            for h in range(scores.n_heads):
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
