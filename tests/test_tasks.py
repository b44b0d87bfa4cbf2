"""Tasks: deterministic prompts, grouped by token length when they differ, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from discovery.tasks import build_dataset, get_task
from discovery.types.errors import TokenizationError, UsageError


def test_gpt2_tokenizer_is_the_real_one(tokenizer):
    assert tokenizer("Hello, world!")["input_ids"] == [15496, 11, 995, 0]
    assert tokenizer(" 5")["input_ids"] == [642]
    ids = tokenizer("The war lasted from the year 1732 to the year 17")["input_ids"]
    assert ids[-7:] == [614, 1596, 2624, 284, 262, 614, 1596]


@pytest.mark.parametrize(
    "name,params",
    [("digits", {}), ("digits", {"template": "done-in"}), ("number-words", {}), ("months", {}), ("greater-than", {})],
)
def test_tasks_build_deterministically(tokenizer, name, params):
    task = get_task(name, **params)
    for corruption in task.corruptions:
        a = build_dataset(task, tokenizer, n=30, seed=5, corruption=corruption)
        b = build_dataset(get_task(name, **params), tokenizer, n=30, seed=5, corruption=corruption)
        assert a.prompt_hash == b.prompt_hash
        assert a.clean_ids.shape == a.corrupt_ids.shape
        assert a.clean_ids[:, 0].eq(tokenizer.bos_token_id).all()
        c = build_dataset(task, tokenizer, n=30, seed=6, corruption=corruption)
        assert c.prompt_hash != a.prompt_hash


def test_digits_examples_follow_lan_and_barez(tokenizer):
    ds = build_dataset(get_task("digits", template="done-in"), tokenizer, n=5, seed=0)
    ex = ds.examples[0]
    numbers = [int(part.split(" done in ")[1]) for part in ex.clean.split(". ")[:4]]
    assert numbers == list(range(numbers[0], numbers[0] + 4))
    assert ex.correct == (f" {numbers[-1] + 1}",) and ex.wrong == (f" {numbers[-1]}",)
    assert ex.clean.endswith(" done in")
    repeat = build_dataset(get_task("digits"), tokenizer, n=5, seed=0).examples[0]
    members = repeat.clean.split()
    assert repeat.corrupt.split() == members[:-1] + [members[-2]]


def test_clean_prompts_do_not_depend_on_corruption(tokenizer):
    a = build_dataset(get_task("months"), tokenizer, n=10, seed=1, corruption="repeat-last")
    b = build_dataset(get_task("months"), tokenizer, n=10, seed=1, corruption="random")
    assert (a.clean_ids == b.clean_ids).all()
    assert not (a.corrupt_ids == b.corrupt_ids).all()


def test_greater_than_answers_split_at_the_start_year(tokenizer):
    ds = build_dataset(get_task("greater-than"), tokenizer, n=20, seed=0)
    for ex, weights in zip(ds.examples, ds.answer_weights):
        year = ex.clean.split("the year ")[1][:4]
        yy = int(year[2:])
        assert ex.correct[0] == f"{yy + 1:02d}" and ex.wrong[-1] == f"{yy:02d}"
        assert f" {year[:2]}01 " in ex.corrupt
        assert int((weights > 0).sum()) == 99 - yy and int((weights < 0).sum()) == yy + 1


def test_unknown_task_and_corruption(tokenizer):
    with pytest.raises(UsageError, match="unknown task 'nope'; known tasks: .*digits"):
        get_task("nope")
    with pytest.raises(UsageError, match="has no corruption 'swap'"):
        build_dataset(get_task("digits"), tokenizer, n=2, corruption="swap")
    with pytest.raises(UsageError, match="unknown template"):
        get_task("digits", template="fancy")


def test_file_task_errors_name_the_prompt(tokenizer, tmp_path):
    good = [
        {"clean": "1 2 3 4", "corrupt": "1 2 3 3", "answer": " 5", "wrong": " 4"},
        {"clean": "2 3 4 5", "corrupt": "2 3 4 4", "answer": " 6", "wrong": " 5"},
    ]
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(good))
    ds = build_dataset(get_task(f"file:{path}"), tokenizer, n=2)
    assert ds.n == 2 and ds.metric == "logit_diff"

    uneven = good + [{"clean": "10 20 30 40 50", "corrupt": "10 20 30 40 40", "answer": " 60", "wrong": " 50"}]
    path.write_text(json.dumps(uneven))
    uneven_ds = build_dataset(get_task(f"file:{path}"), tokenizer, n=3)  # grouped by length, not refused
    assert uneven_ds.mixed_lengths and [g.n for g in uneven_ds.groups] == [2, 1]

    two_tokens = [dict(good[0], answer=" 5 6")]
    path.write_text(json.dumps(two_tokens))
    with pytest.raises(TokenizationError, match=r"answer ' 5 6' is 2 tokens"):
        build_dataset(get_task(f"file:{path}"), tokenizer, n=1)

    misaligned = [dict(good[0], corrupt="1 2 3")]
    path.write_text(json.dumps(misaligned))
    with pytest.raises(TokenizationError, match="corrupted prompt 0 '1 2 3' is 3 tokens"):
        build_dataset(get_task(f"file:{path}"), tokenizer, n=1)

    csv_path = tmp_path / "t.csv"
    csv_path.write_text("clean,corrupt,answer,wrong\n1 2 3 4,1 2 3 3, 5, 4\n")
    assert build_dataset(get_task(f"file:{csv_path}"), tokenizer, n=1).n == 1
    with pytest.raises(UsageError, match="does not exist"):
        get_task(f"file:{tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text(json.dumps([{"clean": "1 2"}]))
    with pytest.raises(UsageError, match="example 0 lacks corrupt, answer, wrong"):
        get_task(f"file:{tmp_path / 'bad.json'}")


def test_unknown_words_are_an_error_naming_them():
    """A word-level vocabulary maps what it lacks to <unk>: scoring that would mean nothing."""
    from discovery.reference import reference_tokenizer

    tok = reference_tokenizer("sequences")
    with pytest.raises(TokenizationError, match=r"prompt 0 .*'lost' is not in the model's vocabulary .*<unk>"):
        build_dataset(get_task("lan-barez-digits", templates="lost"), tok, n=4)
    assert build_dataset(get_task("lan-barez-digits", templates="done"), tok, n=8).n == 8


def test_unknown_word_in_a_file_task(tmp_path):
    from discovery.reference import reference_tokenizer

    tok = reference_tokenizer("sequences")
    path = tmp_path / "ioi.json"
    rows = [{"clean": "Then Alice and 1 2 3", "corrupt": "Then Alice and 1 2 2", "answer": " 4", "wrong": " 3"}]
    path.write_text(json.dumps(rows))
    with pytest.raises(TokenizationError, match=r"prompt 0 'Then Alice and 1 2 3': 'Alice' is not in"):
        build_dataset(get_task(f"file:{path}"), tok, n=1)
    path.write_text(json.dumps([dict(rows[0], clean="Then and 1 2 3", corrupt="Then and 1 2 2", answer=" Alice")]))
    with pytest.raises(TokenizationError, match=r"answer ' Alice': 'Alice' is not in"):
        build_dataset(get_task(f"file:{path}"), tok, n=1)


def digit_splitting_tokenizer():
    """GPT-2's tokenizer with digits split one by one, as Llama's and Qwen's are."""
    from tokenizers import pre_tokenizers

    from discovery.model import gpt2_tokenizer

    tok = gpt2_tokenizer()
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
    )
    return tok


def test_split_digit_answers_name_the_prompt_and_pieces():
    tok = digit_splitting_tokenizer()
    assert len(tok(" 5", add_special_tokens=False)["input_ids"]) == 2
    with pytest.raises(TokenizationError, match=r"prompt 0 '\d+ \d+ \d+ \d+': answer ' \d+' is \d tokens \[' ', '\d'"):
        build_dataset(get_task("digits"), tok, n=5)
    with pytest.raises(TokenizationError, match=r"answer ' 5' is 2 tokens \[' ', '5'\] for this tokenizer"):
        build_dataset(get_task("lan-barez-digits"), tok, n=3)
    # the word tasks do not depend on how digits split
    for name in ("number-words", "months", "lan-barez-number-words", "lan-barez-months"):
        assert build_dataset(get_task(name), tok, n=24).n == 24


def test_answers_without_the_common_leading_space_are_warned_about(tokenizer, tmp_path):
    rows = [
        {"clean": "1 2 3 4", "corrupt": "1 2 3 3", "answer": " 5", "wrong": " 4"},
        {"clean": "2 3 4 5", "corrupt": "2 3 4 4", "answer": " 6", "wrong": " 5"},
        {"clean": "3 4 5 6", "corrupt": "3 4 5 5", "answer": "7", "wrong": " 6"},
    ]
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(rows))
    ds = build_dataset(get_task(f"file:{path}"), tokenizer, n=3)
    assert len(ds.warnings) == 1
    assert "1 answer without the leading space the other 5 have (prompt 2 '7')" in ds.warnings[0]
    path.write_text(json.dumps(rows[:2]))
    assert build_dataset(get_task(f"file:{path}"), tokenizer, n=2).warnings == ()
    # greater-than's two-digit answers have no space at all: nothing to warn about
    assert build_dataset(get_task("greater-than"), tokenizer, n=3).warnings == ()
