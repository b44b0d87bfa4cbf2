"""The papers' datasets as their recipes say (on GPT-2's real tokenizer), and the correctness filter.

Lan & Barez 2024 (apartresearch/seqcont_circuits, ``src/generate_data``, ``data/``); Hanna et al.
2023 (hannamw/gpt2-greater-than, ``dataset.py``, ``utils.py::get_valid_years``,
``cache/potential_nouns.txt``).
"""

from __future__ import annotations

import collections
import re
from types import SimpleNamespace

import pytest
import torch

from discovery.tasks import build_dataset, get_task
from discovery.tasks.greater_than import NOUNS, valid_years
from discovery.tasks.lan_barez import NAMES, OBJECTS
from discovery.types.errors import UsageError

LAN_BAREZ = {
    "lan-barez-digits": [str(i) for i in range(1, 13)],
    "lan-barez-number-words": "one two three four five six seven eight nine ten eleven twelve".split(),
    "lan-barez-months": (
        "January February March April May June July August September October November December".split()
    ),
}
PROMPT = re.compile(
    r"^(\w+) (done|lost|born) in (\w+)\. (\w+) \2 in (\w+)\. (\w+) \2 in (\w+)\. (\w+) \2 in (\w+)\. (\w+) \2 in$"
)


def parse(text: str) -> tuple[str, list[str], list[str]]:
    """(verb, the five subject words, the four members) of a Lan & Barez prompt."""
    m = PROMPT.match(text)
    assert m, text
    g = m.groups()
    return g[1], [g[0], g[3], g[5], g[7], g[9]], [g[2], g[4], g[6], g[8]]


@pytest.mark.parametrize("name", list(LAN_BAREZ))
def test_lan_barez_dataset_follows_their_recipe(tokenizer, name):
    vocab = LAN_BAREZ[name]
    ds = build_dataset(get_task(name), tokenizer, n=1536, seed=0)
    assert ds.n == 1536 and ds.spec.corruption == "random"
    assert not ds.spec.prepend_bos and ds.clean_ids[0, 0] != tokenizer.bos_token_id  # their Dataset adds no BOS
    verbs = [parse(ex.clean)[0] for ex in ds.examples]
    # three templates of 512 prompts, in blocks as their prompts_list is
    assert verbs == ["done"] * 512 + ["lost"] * 512 + ["born"] * 512
    starts: collections.Counter = collections.Counter()
    for ex, verb in zip(ds.examples, verbs):
        _, words, members = parse(ex.clean)
        c_verb, c_words, c_members = parse(ex.corrupt)
        start = vocab.index(members[0])
        assert 0 <= start <= 7  # start members 1..8
        assert members == vocab[start : start + 4]  # consecutive, inside 1..12
        assert ex.correct == (" " + vocab[start + 4],) and ex.wrong == (" " + members[-1],)
        assert len(set(words)) == 5 and set(words) <= set(NAMES if verb == "born" else OBJECTS)
        # corruption: the same words, members drawn from 1..12 with r4 - 1 != r3
        assert c_verb == verb and c_words == words
        r = [vocab.index(m) for m in c_members]
        assert r[3] - 1 != r[2]
        starts[(verb, start)] += 1
    assert set(starts.values()) == {64}  # each start 1..8 64 times per template, as in their data files
    # the corruption is random, not a fixed pattern
    assert len({ex.corrupt for ex in ds.examples}) > 1400


def test_lan_barez_word_lists_are_theirs(tokenizer):
    assert len(OBJECTS) == 73 and len(NAMES) == 100
    assert OBJECTS[:5] == ("Van", "Hat", "Ring", "Desk", "Sun")  # their first done prompt
    # every word is one GPT-2 token at the start of a prompt and after a space (their single-token filter)
    for w in OBJECTS + NAMES:
        assert len(tokenizer(w)["input_ids"]) == 1 and len(tokenizer(" " + w)["input_ids"]) == 1, w
    # all three tasks tokenise to one length (their position dict is read off prompt 0)
    lengths = {build_dataset(get_task(name), tokenizer, n=30).seq_len for name in LAN_BAREZ}
    assert lengths == {23}


def test_lan_barez_parameters_are_recorded_and_checked(tokenizer):
    ds = build_dataset(get_task("lan-barez-months", templates="done,born", bos=True), tokenizer, n=10, seed=3)
    assert ds.description == "lan-barez-months[corruption=random,n=10,seed=3,bos=True,templates=done,born]"
    assert ds.spec.prepend_bos and ds.clean_ids[0, 0] == tokenizer.bos_token_id
    assert [parse(ex.clean)[0] for ex in ds.examples] == ["done"] * 5 + ["born"] * 5
    with pytest.raises(UsageError, match="unknown template died"):
        get_task("lan-barez-digits", templates="done,died")
    with pytest.raises(UsageError, match="no corruption 'repeat-last'"):
        build_dataset(get_task("lan-barez-digits"), tokenizer, n=3, corruption="repeat-last")


def test_greater_than_follows_hanna_et_al(tokenizer):
    ds = build_dataset(get_task("greater-than"), tokenizer, n=490, seed=0)
    valid = set(valid_years(tokenizer))
    yys = []
    for ex, ids in zip(ds.examples, ds.clean_ids):
        m = re.fullmatch(r" The (\w+) lasted from the year (\d{4}) to the year (\d\d)", ex.clean)
        assert m, ex.clean
        noun, year, xx = m.group(1), int(m.group(2)), m.group(3)
        assert noun in NOUNS and 1000 <= year <= 1899 and year in valid and xx == str(year // 100)
        assert ex.corrupt == ex.clean.replace(f"year {year} ", f"year {year // 100}01 ")
        # the BOS spacing: exactly what GPT-2 makes of their "<|endoftext|> The ..." string
        assert ids.tolist() == tokenizer("<|endoftext|>" + ex.clean)["input_ids"]
        assert ids.tolist() == tokenizer("<|endoftext|> " + ex.clean[1:])["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(f" {year}")["input_ids"])
        assert pieces == [f"Ġ{year // 100}", f"{year % 100:02d}"]
        yys.append(year % 100)
    # YY cycled evenly over 02..98: 490 = 5 x 97 + 5
    assert yys[:97] == list(range(2, 99))
    counts = collections.Counter(yys)
    assert set(counts) == set(range(2, 99)) and counts[2] == 6 and counts[7] == 5 and len(set(counts.values())) == 2
    assert ds.clean_ids[:, 1].eq(383).all()  # " The"
    # more than one century (theirs: 1000-1899), and each century's first and last splitting year left out
    assert len({y // 100 for y in valid}) == 9

    def splits(y: int) -> bool:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(f" {y}")["input_ids"])
        return len(pieces) == 2 and len(pieces[1]) == 2

    splitting_17 = [y for y in range(1700, 1800) if splits(y)]
    assert min(splitting_17) not in valid and max(splitting_17) not in valid
    assert set(splitting_17[1:-1]) <= valid


def test_greater_than_nouns_are_their_120():
    assert len(NOUNS) == 120 and NOUNS == tuple(sorted(NOUNS))  # their file is in alphabetical order
    assert NOUNS[:3] == ("abduction", "accord", "affair") and NOUNS[-3:] == ("voyage", "warfare", "work")
    assert "war" not in NOUNS  # the project's old list had it; theirs does not


def test_greater_than_legacy_options(tokenizer):
    ds = build_dataset(get_task("greater-than", century=17, eos=False), tokenizer, n=10, seed=1)
    assert all(ex.clean.startswith("The ") and " 17" in ex.clean for ex in ds.examples)
    assert ds.description == "greater-than[corruption=01-year,n=10,seed=1,balanced=True,century=17,eos=False]"
    with pytest.raises(UsageError, match="century must be"):
        get_task("greater-than", century=7)


# --- the correctness filter ------------------------------------------------------------------


class OneAnswerModel:
    """A stand-in model whose next token is always ``token`` (logit 10, the rest 0)."""

    def __init__(self, token: int, vocab: int) -> None:
        self.token, self.vocab = token, vocab
        self.device = torch.device("cpu")
        self.rows_seen = 0
        self.hf_model = self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        self.rows_seen += input_ids.shape[0]
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, :, self.token] = 10.0
        return SimpleNamespace(logits=logits)


def test_filter_keeps_the_first_prompts_the_model_answers(tokenizer):
    five = tokenizer(" 5")["input_ids"][0]
    model = OneAnswerModel(five, len(tokenizer))
    task = get_task("digits", filter="correct")
    ds = build_dataset(task, tokenizer, n=6, seed=0, model=model)
    assert all(ex.correct == (" 5",) for ex in ds.examples)
    stream = get_task("digits").examples(400, 0, "repeat-last", tokenizer)
    passing = [i for i, ex in enumerate(stream) if ex.correct == (" 5",)][:6]
    assert [ex.clean for ex in ds.examples] == [stream[i].clean for i in passing]
    params = dict(ds.spec.params)
    assert params["filter"] == "correct" and params["candidates"] == passing[-1] + 1
    assert params["filtered_out"] == passing[-1] + 1 - 6
    assert "filter=correct" in ds.description and f"filtered_out={passing[-1] - 5}" in ds.description
    with pytest.raises(UsageError, match="needs the model"):
        build_dataset(task, tokenizer, n=6)
    with pytest.raises(UsageError, match="unknown filter"):
        get_task("digits", filter="maybe")


def test_filter_says_when_too_few_pass(tokenizer):
    never = OneAnswerModel(tokenizer(" the")["input_ids"][0], len(tokenizer))
    with pytest.raises(UsageError, match=r"only 0 of 1024 candidate prompts pass the correctness filter"):
        build_dataset(get_task("months", filter="correct"), tokenizer, n=4, model=never)


def test_filter_on_lan_barez_keeps_whole_groups_of_eight(tokenizer):
    """Their rule: a group of the eight start members stays only if all eight pass, so starts stay balanced."""
    five = tokenizer(" 5")["input_ids"][0]
    model = OneAnswerModel(five, len(tokenizer))
    # only start 1 (answer " 5") passes: no group of eight ever passes completely
    with pytest.raises(UsageError, match="correctness filter"):
        build_dataset(get_task("lan-barez-digits", filter="correct", templates="done"), tokenizer, n=8, model=model)


def test_filter_on_lan_barez_with_a_real_rule(tokenizer):
    from discovery.tasks.filtering import answers_correctly
    from discovery.tasks.lan_barez import LanBarezDigitsTask

    task = LanBarezDigitsTask(templates="done,lost")
    # a group passes or fails as a whole; the selection takes passing groups in stream order per template
    passing = [True] * 200
    for k in range(8, 16):  # round 0's second template (lost) group fails in one prompt
        passing[k] = k != 12
    chosen = task.select(passing, 16)
    assert chosen is not None
    indices, considered = chosen
    assert indices == list(range(0, 8)) + list(range(24, 32))  # lost's group comes from round 1
    assert considered == 32
    logits = torch.zeros(2, 10)
    logits[0, 3], logits[1, 3], logits[1, 4] = 5.0, 5.0, 4.9
    assert answers_correctly(logits, [[(3, 1.0), (4, -1.0)], [(3, 1.0), (4, -1.0)]]) == [True, False]


def test_filter_on_a_file_task_looks_at_the_file_only(tokenizer, tmp_path):
    import json

    rows = [
        {"clean": f"{a} {a + 1} {a + 2} {a + 3}", "corrupt": f"{a} {a + 1} {a + 2} {a + 2}", "answer": f" {a + 4}",
         "wrong": f" {a + 3}"}
        for a in (1, 2, 1, 3)
    ]  # fmt: skip
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    model = OneAnswerModel(tokenizer(" 5")["input_ids"][0], len(tokenizer))
    ds = build_dataset(get_task(f"file:{path}", filter="correct"), tokenizer, n=2, model=model)
    assert [ex.clean for ex in ds.examples] == ["1 2 3 4", "1 2 3 4"]
    assert dict(ds.spec.params)["filtered_out"] == 1
    with pytest.raises(UsageError, match="only 2 of 4 candidate prompts pass"):
        build_dataset(get_task(f"file:{path}", filter="correct"), tokenizer, n=3, model=model)
