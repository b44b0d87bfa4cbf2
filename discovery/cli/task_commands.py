"""``circuits prompts`` (what a task scores) and ``circuits reproduce`` (a paper's pipeline end to end)."""

from __future__ import annotations

import json

import typer

from discovery.cli import common
from discovery.cli.common import console, err_console
from discovery.types.errors import UsageError

PAPERS = ("lan-barez", "greater-than")


def prompts(
    model: str = common.ModelOpt,
    task: str = common.TaskOpt,
    n: int = typer.Option(10, "--n", help="number of prompts"),
    seed: int = common.SeedOpt,
    corruption: str | None = common.CorruptionOpt,
    task_param: list[str] | None = common.TaskParamOpt,
    json_out: bool = typer.Option(
        False, "--json", help="print a JSON list of {clean, corrupt, answer, wrong} (the file-task format)"
    ),
    device: str = common.DeviceOpt,
) -> None:
    """Print a task's clean and corrupted prompts with their answer and wrong tokens, as scored."""
    common.check_dataset_options(task, n, task_param)  # usage errors before the model loads
    loaded = common.open_model(model, device)
    dataset = common.open_dataset(loaded, task, n, seed, corruption, task_param)
    rows = [
        {
            "clean": ex.clean,
            "corrupt": ex.corrupt,
            "answer": list(ex.correct) if len(ex.correct) > 1 else ex.correct[0],
            "wrong": list(ex.wrong) if len(ex.wrong) > 1 else ex.wrong[0],
        }
        for ex in dataset.examples
    ]
    if json_out:
        console.print("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]")  # one prompt per line
        return
    bos = loaded.tokenizer.bos_token if dataset.spec.prepend_bos else None
    console.print(f"dataset  {dataset.description} ({dataset.n} prompts of {dataset.seq_len} tokens)")
    console.print(f"metric   {dataset.metric}; " + (f"every prompt starts with {bos!r}" if bos else "no BOS token"))
    for i, row in enumerate(rows):
        console.print(f"[{i}] clean    {row['clean']!r}")
        console.print(f"    corrupt  {row['corrupt']!r}")
        console.print(f"    answer   {_tokens(row['answer'])}   wrong {_tokens(row['wrong'])}")


def _tokens(value: str | list[str]) -> str:
    if isinstance(value, str):
        return repr(value)
    return f"{len(value)} tokens {value[0]!r}..{value[-1]!r}" if len(value) > 3 else repr(value)


def reproduce(
    paper: str = typer.Argument(..., help="lan-barez or greater-than"),
    model: str | None = typer.Option(
        None, "--model", "-m", help="model (default: ref:sequences for lan-barez; greater-than needs a GPT-2 tokenizer)"
    ),
    seed: int = common.SeedOpt,
    per_template: int = typer.Option(512, "--per-template", help="lan-barez: prompts per template (theirs: 512)"),
    n: int = typer.Option(490, "--n", help="greater-than: prompts (theirs: 490)"),
    no_filter: bool = typer.Option(False, "--no-filter", help="lan-barez: keep prompts the model answers wrongly"),
    device: str = common.DeviceOpt,
) -> None:
    """Run a paper's pipeline end to end and print each number beside the paper's published one (GPT-2 small)."""
    from discovery.analysis import reproduce as papers

    if paper not in PAPERS:
        raise UsageError(f"unknown paper {paper!r}; choose one of: {', '.join(PAPERS)}")
    if per_template < 1 or n < 1:
        raise UsageError("--per-template and --n must be at least 1")
    spec = model or ("ref:sequences" if paper == "lan-barez" else None)
    if spec is None:
        raise UsageError(
            "greater-than needs a model whose tokenizer splits ' 1732' into ' 17' + '32' (GPT-2's): pass --model "
            "(gpt2 with a model hub, or a local GPT-2-tokenizer directory); the reference models cannot write years"
        )
    loaded = common.open_model(spec, device)
    with common.progress_bar(f"reproduce {paper}") as progress:
        if paper == "lan-barez":
            results = papers.lan_barez(
                loaded, per_template=per_template, seed=seed, filter_correct=not no_filter, progress=progress
            )
        else:
            results = papers.greater_than(loaded, n=n, seed=seed, progress=progress)
    console.print(f"model  {loaded.identity.name} (weights sha256 {loaded.identity.weight_hash[:12]})")
    console.print(
        "published: the paper's value for GPT-2 small, read from its repository; ours: measured here on this model"
    )
    for rep in results:
        console.print("")
        console.print(f"== {rep.task}: {rep.setting}")
        for note in rep.notes:
            console.print(f"   note: {note}")
        for row in rep.rows:
            console.print(f"   {row.quantity}")
            console.print(f"      ours       {row.ours}")
            if row.published:
                console.print(f"      published  {row.published}" + (f"  [{row.source}]" if row.source else ""))
    if not results:
        err_console.print("nothing was run")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command()(prompts)
    app.command()(reproduce)
