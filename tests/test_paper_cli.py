"""``circuits prompts`` and ``circuits reproduce`` as a user runs them, and ``discover``'s missed-target line."""

from __future__ import annotations

import json

import pytest
import torch

from discovery.cli import main
from discovery.tasks import build_dataset, get_task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("model")
    tiny_model.hf_model.save_pretrained(path)
    tiny_model.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def answers_five_dir(tmp_path_factory, tokenizer):
    """A 1-layer GPT-2 whose next token is always ' 5' (its final LayerNorm outputs a multiple of
    the ' 5' embedding): the correctness filter keeps exactly the prompts whose answer is 5."""
    from discovery.model import random_gpt2

    model = random_gpt2(n_layers=1, n_heads=2, d_model=32, seed=3, tokenizer=tokenizer)
    five = tokenizer(" 5")["input_ids"][0]
    with torch.no_grad():
        wte = model.hf_model.transformer.wte.weight
        model.hf_model.transformer.ln_f.weight.zero_()
        model.hf_model.transformer.ln_f.bias.copy_(wte[five] * 2000.0)
    path = tmp_path_factory.mktemp("five")
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def test_prompts_json_is_the_file_task_format(model_dir, tmp_path, tokenizer, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    for task in ("digits", "greater-than", "lan-barez-months"):
        main(["prompts", "--model", str(model_dir), "--task", task, "--n", "6", "--json"])
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 6 and set(rows[0]) == {"clean", "corrupt", "answer", "wrong"}
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(rows))
        original = build_dataset(get_task(task), tokenizer, n=6)
        again = build_dataset(get_task(f"file:{path}"), tokenizer, n=6, prepend_bos=original.spec.prepend_bos)
        # the same token ids and answer weights: a user sees exactly what is scored
        assert torch.equal(original.clean_ids, again.clean_ids) and torch.equal(original.corrupt_ids, again.corrupt_ids)
        assert torch.equal(original.answer_weights.abs().sum(1), again.answer_weights.abs().sum(1))


def test_prompts_text_shows_answers_and_bos(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    main(["prompts", "--model", str(model_dir), "--task", "digits", "--n", "2", "--task-param", "template=done-in"])
    out = capsys.readouterr().out
    assert "every prompt starts with '<|endoftext|>'" in out
    assert "[1] clean" in out and "corrupt" in out and "answer   ' " in out and "wrong ' " in out
    main(["prompts", "--model", str(model_dir), "--task", "lan-barez-digits", "--n", "2"])
    assert "no BOS token" in capsys.readouterr().out


def test_filtered_out_count_is_printed_and_recorded(answers_five_dir, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    main(["prompts", "--model", str(answers_five_dir), "--task", "digits", "--n", "3", "--json", "--task-param",
          "filter=correct"])  # fmt: skip
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["answer"] for r in rows] == [" 5"] * 3
    dropped = int(captured.err.split("filter=correct dropped ")[1].split(" of ")[0])
    assert dropped > 0 and f"dropped {dropped} of {dropped + 3} candidate prompts" in captured.err
    main(["prompts", "--model", str(answers_five_dir), "--task", "digits", "--n", "3", "--task-param",
          "filter=correct"])  # fmt: skip
    assert f"filtered_out={dropped}" in capsys.readouterr().out  # in the dataset's description, stored with scores


def test_file_task_spacing_warning_is_printed(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    rows = [
        {"clean": "1 2 3 4", "corrupt": "1 2 3 3", "answer": " 5", "wrong": " 4"},
        {"clean": "2 3 4 5", "corrupt": "2 3 4 4", "answer": "6", "wrong": " 5"},
        {"clean": "3 4 5 6", "corrupt": "3 4 5 5", "answer": " 7", "wrong": " 6"},
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows))
    main(["prompts", "--model", str(model_dir), "--task", f"file:{path}", "--n", "3"])
    assert "warning: 1 answer without the leading space the other 5 have (prompt 1 '6')" in capsys.readouterr().err


def test_discover_says_target_not_met_first(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    args = ["discover", "--model", str(model_dir), "--n", "4", "--png", str(tmp_path / "c.png"), "--method", "greedy"]
    main([*args, "--target", "5.0", "--param", "max_size=1"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("target not met")
    main([*args, "--target", "-100"])
    assert not capsys.readouterr().out.startswith("target not met")


def test_reproduce_greater_than_labels_published_numbers(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    main(["reproduce", "greater-than", "--model", str(model_dir), "--n", "20"])
    out = capsys.readouterr().out
    assert "published: the paper's value for GPT-2 small" in out
    assert "full-model probability difference" in out and "ours" in out
    assert "hannamw/gpt2-greater-than circuit_discovery.py" in out
    assert "5.1, 5.5, 6.9, 7.10, 8.8, 8.11, 9.1" in out  # their heads, labelled published
    assert "this model is 2 x 4, so it is not scored" in out
    with pytest.raises(SystemExit):
        main(["reproduce", "greater-than"])  # the reference models cannot write years
    assert "needs a model whose tokenizer splits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "nanda"])
    assert "unknown paper 'nanda'" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_lan_barez_on_ref_sequences(sequences_reference, capsys, monkeypatch):
    monkeypatch.setenv("CIRCUITS_NO_STORE", "1")
    main(["reproduce", "lan-barez", "--model", str(sequences_reference.path), "--per-template", "32"])
    out = capsys.readouterr().out
    for task, source in (
        ("lan-barez-digits", "results/numerals_circuit_thres_0.8.json"),
        ("lan-barez-number-words", "results/numwords_circuit_thres_0.8.json"),
        ("lan-barez-months", "results/months_circuit_thres_0.8.json"),
    ):
        assert f"== {task}: 32 prompts (done; 32 each)" in out
        assert f"apartresearch/seqcont_circuits {source}" in out
    assert "template 'lost' left out: 'lost' not in the vocabulary" in out
    assert "14 heads, 11 MLPs of 144 heads, 12 MLPs" in out  # their numerals circuit, labelled published
    assert "NOT above it" not in out
