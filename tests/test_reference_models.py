"""Reference models: accuracy, ground-truth heads, determinism, the HF directory round trip, the cache,
the shipped copies.

The full models come once per session (``tests/reference_fixtures.py``: ``induction`` is built by hand
in seconds, ``sequences`` is the package's shipped copy); the rest trains a few dozen steps at most,
except the ``slow`` test that retrains ``sequences`` from its recipe (minutes on an idle CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import discovery.reference as reference
from discovery.reference import (
    REFERENCE_MODELS,
    build_tokenizer,
    ensure_reference_model,
    shipped_reference_dir,
    train_reference,
)
from discovery.reference.shipped import file_sha256, recipe, shipped_record
from discovery.reference.training import ReferenceSpec, TrainingReport, save, train_model
from discovery.types.errors import UsageError
from tests.reference_fixtures import TrainedReference

torch.set_num_threads(2)


# --- the tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_splits_like_gpt2_and_loads_with_auto_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = build_tokenizer(["1", "2", "3", "4", "5", "done", "in", "."])
    ids = tok("1 2 3 4", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["1", "\u01202", "\u01203", "\u01204"]
    assert tok.convert_ids_to_tokens(tok(" 5", add_special_tokens=False)["input_ids"]) == ["\u01205"]
    assert tok.convert_ids_to_tokens(tok("in 4.", add_special_tokens=False)["input_ids"]) == ["in", "\u01204", "."]
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert tok.bos_token == "<|endoftext|>"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("1 2 3 4", add_special_tokens=False)["input_ids"] == ids
    assert again.bos_token_id == tok.bos_token_id


# --- short runs: determinism, the saved directory, the cache -----------------------------------------


# sequences: 30 steps, then its held-out accuracy over three tasks (100 to 480 s on the loaded 2 cores)
@pytest.mark.parametrize("name", ["induction", pytest.param("sequences", marks=pytest.mark.slow), "planted-chains"])
def test_same_seed_gives_identical_weights(tmp_path: Path, name: str) -> None:
    a = train_reference(name, tmp_path / "a", seed=3, steps=30)
    b = train_reference(name, tmp_path / "b", seed=3, steps=30)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a.heldout_accuracy == b.heldout_accuracy
    train_reference(name, tmp_path / "c", seed=4, steps=30)
    wc = load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_saved_directory_loads_with_the_same_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = REFERENCE_MODELS["induction-trained"]
    assert isinstance(spec, ReferenceSpec)
    tok = build_tokenizer(spec.words)
    model, _, _ = train_model(spec, tok, seed=0, steps=20)
    save(model, tok, tmp_path, TrainingReport("induction", 0, 20, 0.0, {}, tmp_path))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([loaded_tok("<|endoftext|>king ship road fish bird king ship road")["input_ids"]])
    assert ids.shape[1] == 9 and loaded_tok.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert type(loaded).__name__ == "GPT2LMHeadModel"


def test_ensure_reference_model_trains_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITS_CACHE_DIR", str(tmp_path))
    calls = []
    real = reference.train_reference

    def short(name, out_dir, seed=0, progress=None, steps=None):
        calls.append(name)
        return real(name, out_dir, seed=seed, progress=progress, steps=5)

    monkeypatch.setattr(reference, "train_reference", short)
    seen = []
    path = ensure_reference_model("induction", progress=lambda done, total, message: seen.append(done))
    spec = REFERENCE_MODELS["induction"]
    assert path == tmp_path / "reference" / f"induction-seed0-v{spec.version}"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert seen, "progress was never reported"
    assert ensure_reference_model("induction") == path
    assert calls == ["induction"]
    assert [p.name for p in (tmp_path / "reference").iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_a_crash_while_training_leaves_no_model_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITS_CACHE_DIR", str(tmp_path))

    def crash(name, out_dir, seed=0, progress=None, steps=None):
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(reference, "train_reference", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_reference_model("induction")
    assert [p for p in (tmp_path / "reference").iterdir() if not p.name.endswith(".lock")] == []


# --- the shipped models ---------------------------------------------------------------------------------

TRAINED = sorted(name for name, spec in REFERENCE_MODELS.items() if isinstance(spec, ReferenceSpec))


def test_every_trained_model_is_shipped_from_its_current_recipe() -> None:
    """A spec changed without a version bump, or bumped without shipping the new weights, fails here."""
    assert TRAINED == ["induction-trained", "sequences"]
    for name in TRAINED:
        spec = REFERENCE_MODELS[name]
        assert isinstance(spec, ReferenceSpec)
        path = shipped_reference_dir(name)
        assert path is not None and path.name == f"{name}-seed0-v{spec.version}", name
        record = shipped_record(path)
        assert (record["name"], record["seed"], record["version"]) == (name, 0, spec.version)
        assert record["recipe"] == recipe(spec), f"{name}'s spec changed: bump its version and ship it again"
        assert record["model_safetensors_sha256"] == file_sha256(path / "model.safetensors")
        met = all(record["heldout_accuracy"][k] >= v for k, v in spec.targets.items())
        assert record["meets_targets"] == met, record
        # induction-trained is experimental, shipped as trained (the README gives its figures)
        assert met or name == "induction-trained", record
        for file in ("config.json", "model.safetensors", "tokenizer.json", "reference.json"):
            assert (path / file).is_file(), (name, file)


@pytest.mark.parametrize("name", ["sequences", "induction-trained"])
def test_shipped_model_loads_at_once_with_its_recorded_hash(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUITS_CACHE_DIR", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped model was trained")

    reference.load_model("ref:induction")  # imports and the first bridge boot, which the bound is not about
    monkeypatch.setattr(reference, "train_reference", no_training)
    assert [p.name for p in (tmp_path / "reference").iterdir() if not p.name.endswith(".lock")] == [
        f"induction-seed0-v{REFERENCE_MODELS['induction'].version}"  # built by hand: not shipped
    ]
    start = time.perf_counter()
    loaded = reference.load_model(f"ref:{name}")
    seconds = time.perf_counter() - start
    assert seconds < 5.0, f"ref:{name} took {seconds:.1f} s to load"  # a behaviour bound, not a benchmark
    path = shipped_reference_dir(name)
    assert path is not None and loaded.source_dir == path
    assert loaded.identity.name == f"ref:{name}"
    assert loaded.identity.weight_hash == shipped_record(path)["weight_hash"]
    assert len(list((tmp_path / "reference").iterdir())) == 2  # nothing copied into the cache (one lock)


def test_another_seed_a_new_version_and_train_reference_train_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from discovery.cli import main

    monkeypatch.setenv("CIRCUITS_CACHE_DIR", str(tmp_path))
    shipped = shipped_reference_dir("induction-trained")
    assert shipped is not None
    before = {p.name: file_sha256(p) for p in shipped.iterdir()}
    calls = []
    real = reference.train_reference

    def short(name, out_dir, seed=0, progress=None, steps=None):
        calls.append((name, seed))
        return real(name, out_dir, seed=seed, progress=progress, steps=3)

    monkeypatch.setattr(reference, "train_reference", short)
    spec = REFERENCE_MODELS["induction-trained"]
    assert ensure_reference_model("induction-trained", seed=1) == tmp_path / "reference" / (
        f"induction-trained-seed1-v{spec.version}"
    )
    main(["train-reference", "induction-trained"])  # retrains: into the cache, not over the package's copy
    assert f"induction-trained-seed0-v{spec.version}" in capsys.readouterr().out.replace("\n", "")
    assert calls == [("induction-trained", 1), ("induction-trained", 0)]
    assert ensure_reference_model("induction-trained") == shipped  # ref:NAME still loads the shipped one
    assert {p.name: file_sha256(p) for p in shipped.iterdir()} == before
    bumped = dataclasses.replace(spec, version=spec.version + 1)
    monkeypatch.setitem(REFERENCE_MODELS, "induction-trained", bumped)
    assert shipped_reference_dir("induction-trained") is None
    assert ensure_reference_model("induction-trained").name == f"induction-trained-seed0-v{spec.version + 1}"
    assert calls[-1] == ("induction-trained", 0)


def test_unknown_reference_model_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITS_CACHE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="unknown reference model 'nope'"):
        ensure_reference_model("nope")
    with pytest.raises(UsageError):
        train_reference("nope", tmp_path / "x")


def test_induction_task_prompts(tmp_path: Path) -> None:
    from discovery.model import gpt2_tokenizer
    from discovery.tasks import build_dataset, get_task

    for tok in (build_tokenizer(REFERENCE_MODELS["induction"].words), gpt2_tokenizer()):
        ds = build_dataset(get_task("induction"), tok, n=20, seed=0)
        assert ds.clean_ids.shape == (20, 1 + 4 + 6 + 4 + 5)
        clean, corrupt = ds.clean_ids, ds.corrupt_ids
        assert torch.equal(clean[:, :15], corrupt[:, :15])  # BOS, prefix, segment, gap unchanged
        assert torch.equal(clean[:, 5:10], clean[:, 15:20])  # the segment repeats
        assert not (corrupt[:, 15:, None] == clean[:, None, :]).any()  # fresh words only
        ex = ds.examples[0]
        words = ex.clean.split()
        assert ex.correct == (" " + words[9],) and ex.wrong == (" " + words[3],)


# --- the full models ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_induction_model_reaches_its_accuracy(induction_reference: TrainedReference) -> None:
    report = induction_reference.report
    assert report.heldout_accuracy["repeated-half (worst cell)"] >= 0.95, report
    assert report.heldout_accuracy["induction"] >= 0.9, report
    assert report.meets_targets


@pytest.mark.slow
def test_induction_heads_hold_over_every_length_offset_and_bos(induction_reference: TrainedReference) -> None:
    """Attention patterns only, on sequences unlike the training batches' own draws: halves of 4..24
    random words, with and without BOS, at random offsets. The heads are those whose grid-mean score
    exceeds 0.5; each must score >= 0.8 in every cell, and the model must predict the repeated half."""
    from discovery.reference import head_scores_grid

    grid = head_scores_grid(induction_reference.path, n=60, seed=777)
    assert {(half, bos) for half, bos, _ in grid.cells} == {(h, b) for h in range(4, 25, 4) for b in (True, False)}
    previous, induction = grid.previous_token_heads(0.5), grid.induction_heads(0.5)
    assert previous and all(layer == 0 for layer, _ in previous), grid.previous_token_mean
    assert induction and all(layer == 1 for layer, _ in induction), grid.induction_mean
    for layer, h in previous:
        assert grid.previous_token_min[layer, h] >= 0.8, (layer, h, grid.previous_token_min)
    for layer, h in induction:
        assert grid.induction_min[layer, h] >= 0.8, (layer, h, grid.induction_min)
    assert grid.accuracy_min >= 0.95, [(half, bos, s.accuracy) for half, bos, s in grid.cells]
    # and they are specific: no layer-1 head is a previous-token head, no layer-0 head an induction head
    assert grid.previous_token_mean[1].max() < 0.3 and grid.induction_mean[0].max() < 0.3


@pytest.mark.slow
def test_induction_task_runs_on_the_loaded_model(induction_reference: TrainedReference) -> None:
    from discovery.model import load_model
    from discovery.tasks import build_dataset, get_task

    loaded = load_model(str(induction_reference.path))
    ds = build_dataset(get_task("induction"), loaded.tokenizer, n=50, seed=1)
    with torch.no_grad():
        clean = loaded.hf_model(ds.clean_ids).logits[:, -1]
        corrupt = loaded.hf_model(ds.corrupt_ids).logits[:, -1]
    idx = ds.answer_tokens
    diff_clean = (clean[:, idx] * ds.answer_weights).sum(-1).mean()
    diff_corrupt = (corrupt[:, idx] * ds.answer_weights).sum(-1).mean()
    assert diff_clean > 3.0 and abs(float(diff_corrupt)) < 1.0, (diff_clean, diff_corrupt)


def test_shipped_sequences_model_reaches_its_accuracy(sequences_reference: TrainedReference) -> None:
    """Measured again here, on this machine, not read from the record: the same weights everywhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = REFERENCE_MODELS["sequences"]
    model = AutoModelForCausalLM.from_pretrained(sequences_reference.path).eval()
    accuracy = spec.evaluate(model, AutoTokenizer.from_pretrained(sequences_reference.path), 0)
    for task in ("digits", "number-words", "months"):
        assert accuracy[task] >= 0.95, accuracy
        assert accuracy[task] == pytest.approx(sequences_reference.report.heldout_accuracy[task], abs=0.01)
    assert sequences_reference.report.meets_targets


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains the full model: about 6 minutes on idle cores, far longer on busy ones
def test_retraining_sequences_from_its_recipe_meets_its_targets(tmp_path: Path) -> None:
    """The shipped weights are one machine's training run; the recipe itself must still reach the targets
    (another machine's weights differ slightly: float sums run in another order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the shipped copy was trained: on busy shared cores 2 threads ran 7x slower
    try:
        report = train_reference("sequences", tmp_path / "sequences", seed=0)
    finally:
        torch.set_num_threads(threads)
    for task in ("digits", "number-words", "months"):
        assert report.heldout_accuracy[task] >= 0.95, report
    assert report.meets_targets


def test_sequence_tasks_run_unchanged_on_the_loaded_model(sequences_reference: TrainedReference) -> None:
    from discovery.model import load_model
    from discovery.tasks import build_dataset, get_task

    loaded = load_model(str(sequences_reference.path))
    for task in ("digits", "number-words", "months"):
        for template in ("plain", "done-in"):
            ds = build_dataset(get_task(task, template=template), loaded.tokenizer, n=50, seed=123)
            with torch.no_grad():
                logits = loaded.hf_model(ds.clean_ids).logits[:, -1]
            correct = torch.tensor(
                [loaded.tokenizer(ex.correct[0], add_special_tokens=False)["input_ids"][0] for ex in ds.examples]
            )
            accuracy = float((logits.argmax(-1) == correct).float().mean())
            assert accuracy >= 0.9, (task, template, accuracy)


def test_heads_command_reports_the_whole_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from discovery.cli import main

    train_reference("induction", tmp_path / "m", seed=0, steps=3)
    main(["heads", "--model", str(tmp_path / "m"), "--n", "3", "--png", str(tmp_path / "h.png")])
    out = capsys.readouterr().out
    assert "worst cell" in out and "per grid cell" in out
    # one row per (half length, BOS) cell: 6 lengths with BOS, 6 without
    assert out.count("│ yes │") == 6 and out.count("│  no │") == 6, out
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["heads", "--model", str(tmp_path / "m"), "--n", "0"])
    assert "--n must be at least 1" in capsys.readouterr().err
