"""Lan & Barez 2024's sequence-continuation datasets: ``lan-barez-digits``, ``-number-words``, ``-months``.

The recipe of apartresearch/seqcont_circuits (``src/generate_data``, ``data/*/``, read in their
repository; the word lists below are the ones their data files use):

- members are 1..12 (``one``..``twelve``, ``January``..``December``); a prompt shows four
  consecutive members starting at 1..8 (so the answer is at most 12), the start cycling 1..8 in
  groups of eight;
- three templates, 512 prompts each by default (n is split evenly over ``templates``):
  ``{Object} done in {N}.``, ``{Object} lost in {N}.`` (their 73 one-token objects) and
  ``{Name} born in {N}.`` (their 100 first names); five distinct words per prompt:
  ``Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in`` -> `` 5``;
- the wrong answer of the logit difference is the last member shown (`` 4``);
- corruption ``random`` (their ``randDS_*.pkl``, the mean-ablation dataset): the same prompt with
  the four members drawn from 1..12 at random, subject to r4 - 1 != r3 (the last two shown are
  not consecutive);
- no BOS token (their ``Dataset`` tokenises the text as is; ``bos=true`` adds it);
- with ``filter=correct`` (their rule: top-1 is the answer and p(answer) > 2 p(wrong)), a group of
  eight prompts (starts 1..8) is kept only when all eight pass, which keeps the starts balanced, as
  their ``get_good_prompts_nw_months`` does.

Not reproduced: their numerals and months prompts reuse the number-words prompts' objects (each task
here draws its own), their filter ran with a BOS token while their scoring ran without one (here
both use the dataset's tokens), and their ``randDS`` text has a chained ``str.replace`` that
sometimes writes members outside 1..12 (``110``); here the drawn members are written as drawn.

Words a tokenizer does not have as one known token (at the start of a prompt and after a space) are
dropped from the object and name pools; a template whose own words (``lost``, ``born``) the
tokenizer does not know fails with an error naming them (see :meth:`LanBarezTask.expressible_templates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from discovery.tasks.base import Example, Task, _unknown_words
from discovery.types.errors import UsageError

# The 73 objects of their done/lost prompts, in order of first use in data/numerals/numerals_prompts_done.pkl
# (their common_words.json, capitalised and filtered to one GPT-2 token).
OBJECTS: tuple[str, ...] = tuple(
    """
Van Hat Ring Desk Sun Ice Snow Watch Table Moon Queen Book Rose Oil Car Light Arm Road Ball Cow Key Ocean House
Apple Pear Star Box Hill Ant Chair Orange Zip Gate Wolf Rain Flag Cat Hand Fish Snake Window Ear Sand Camera Dog
Rat Nut Night Wall Tree Ax Fan Bird Wind Wallet Jam Train Year Mouse Clock Wheel Glass Bug Map Jar Fire Corn Eye
Gold Lake King Pen Iron
""".split()
)
# The 100 first names of their born prompts (Faker names filtered to one GPT-2 token), in order of
# first use in data/numerals/numerals_prompts_names.pkl.
NAMES: tuple[str, ...] = tuple(
    """
Marcus Victoria George Brandon Jamie Mike Jay Arthur Eric Andre Jack Jose Stephen Allen Gene Tyler Marc Jessica
Henry Danny Jon Charles Keith Donald Connor Jim Sean Aaron Roy Morgan Jeremy Hunter Edward Maria Mary Rose Alan
Anne Chelsea Craig Elizabeth Jennifer William Bill Anna Steve Laura Steven Richard Madison Kyle Matthew Bruce
Scott Anthony Lee Chris Paul Diamond Adam David Jimmy Ian Gordon Mark Rick Michael Alex Jacob Jeff Tom Terry
Kevin Luke James Thomas Jo Gary April Ryan Howard Joseph Kim Lisa Taylor Robert Joshua Justin John Greg Rachel
Ann Carl Christopher Larry Peter Roger Albert Christian Kelly
""".split()
)
assert len(OBJECTS) == 73 and len(set(OBJECTS)) == 73 and len(NAMES) == 100 and len(set(NAMES)) == 100

TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "done": ("done", OBJECTS),
    "lost": ("lost", OBJECTS),
    "born": ("born", NAMES),
}
"""template name -> (verb, the words that fill its subject slot)."""

SHOWN = 4
"""Members shown per prompt."""
STARTS = 8
"""Start members 1..8: the answer is at most the 12th member."""
WORDS_PER_PROMPT = SHOWN + 1


class LanBarezTask(Task):
    vocabulary: ClassVar[tuple[str, ...]]
    corruptions = ("random",)
    default_corruption = "random"
    metric = "logit_diff"

    def __init__(self, templates: str | Sequence[str] = "done,lost,born", bos: bool = False, **params: Any) -> None:
        names = [t.strip() for t in templates.split(",")] if isinstance(templates, str) else list(templates)
        unknown = [t for t in names if t not in TEMPLATES]
        if not names or unknown:
            raise UsageError(
                f"task {self.name!r}: unknown template {', '.join(unknown) or '(none)'}; "
                f"choose from: {', '.join(TEMPLATES)} (comma list)"
            )
        if not isinstance(bos, bool):
            raise UsageError(f"task {self.name!r}: bos must be true or false, got {bos!r}")
        super().__init__(templates=",".join(names), bos=bos, **params)
        self.templates = names
        self.bos = bos

    @property
    def prepend_bos(self) -> bool:
        return self.bos

    # --- what a tokenizer can express ------------------------------------------------------------
    @staticmethod
    def _one_known_token(tokenizer: Any, text: str) -> bool:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None)

    def word_pool(self, template: str, tokenizer: Any) -> tuple[str, ...]:
        """The template's subject words that are one known token at the start and after a space."""
        words = TEMPLATES[template][1]
        return tuple(
            w for w in words if self._one_known_token(tokenizer, w) and self._one_known_token(tokenizer, " " + w)
        )

    @classmethod
    def expressible_templates(cls, tokenizer: Any) -> tuple[list[str], dict[str, str]]:
        """``(templates the tokenizer can write, {template: why not} for the others)``."""
        ok, why = [], {}
        probe = cls(templates=",".join(TEMPLATES))
        for name, (verb, _) in TEMPLATES.items():
            unknown = _unknown_words(tokenizer, f" {verb} in")
            pool = probe.word_pool(name, tokenizer)
            if unknown:
                why[name] = f"{', '.join(repr(w) for w in unknown)} not in the vocabulary"
            elif len(pool) < WORDS_PER_PROMPT:
                why[name] = f"only {len(pool)} of its {len(TEMPLATES[name][1])} words are one known token"
            else:
                ok.append(name)
        return ok, why

    # --- generation ------------------------------------------------------------------------------
    def render(self, template: str, words: Sequence[str], members: Sequence[str]) -> str:
        verb = TEMPLATES[template][0]
        return " ".join([f"{w} {verb} in {m}." for w, m in zip(words, members)] + [f"{words[SHOWN]} {verb} in"])

    def _candidate(self, k: int, seed: int, pools: dict[str, tuple[str, ...]]) -> Example:
        """Candidate ``k`` of the stream: round ``k // (8 * T)``, template ``(k // 8) % T``, start
        ``k % 8 + 1``; its own generator, so the stream is prefix-stable."""
        template = self.templates[(k // STARTS) % len(self.templates)]
        start = k % STARTS
        rng = np.random.default_rng([seed, k])
        pool = pools[template]
        words = [pool[int(i)] for i in rng.choice(len(pool), WORDS_PER_PROMPT, replace=False)]
        vocab = self.vocabulary
        members = vocab[start : start + SHOWN]
        while True:  # their randDS: r1..r4 uniform in 1..12, redrawn until r4 - 1 != r3
            r = [int(x) for x in rng.integers(0, len(vocab), SHOWN)]
            if r[3] - 1 != r[2]:
                break
        return Example(
            clean=self.render(template, words, members),
            corrupt=self.render(template, words, [vocab[i] for i in r]),
            correct=(" " + vocab[start + SHOWN],),
            wrong=(" " + members[-1],),
        )

    def candidates(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        pools = {}
        for t in self.templates:
            pools[t] = self.word_pool(t, tokenizer)
            if len(pools[t]) < WORDS_PER_PROMPT:
                raise UsageError(
                    f"task {self.name!r}: template {t!r} needs {WORDS_PER_PROMPT} one-token words, this tokenizer "
                    f"has {len(pools[t])} of its {len(TEMPLATES[t][1])}; choose other templates (templates=...)"
                )
        return [self._candidate(k, seed, pools) for k in range(n)]

    def sizes(self, n: int) -> list[int]:
        """Prompts per template: n split as evenly as possible, the first templates taking the remainder."""
        k = len(self.templates)
        return [n // k + (i < n % k) for i in range(k)]

    def max_candidates(self, n: int) -> int:
        return max(64 * n, 1024)

    def select(self, passing: Sequence[bool], n: int) -> tuple[list[int], int] | None:
        """Per template, whole groups of eight (starts 1..8) whose prompts all pass, in stream order,
        until the template has its share; the dataset is the templates' blocks one after another."""
        per_round = STARTS * len(self.templates)
        blocks: list[list[int]] = []
        considered = 0
        for t, size in enumerate(self.sizes(n)):
            block: list[int] = []
            group_start = t * STARTS
            while len(block) < size:
                group = list(range(group_start, group_start + STARTS))
                if group[-1] >= len(passing):
                    return None
                if all(passing[i] for i in group):
                    block += group[: size - len(block)]
                    considered = max(considered, group[-1] + 1)
                group_start += per_round
            blocks.append(block)
        return [i for b in blocks for i in b], considered

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        rounds = -(-max(self.sizes(n)) // STARTS)
        stream = self.candidates(rounds * STARTS * len(self.templates), seed, corruption, tokenizer)
        chosen = self.select([True] * len(stream), n)
        assert chosen is not None
        return [stream[i] for i in chosen[0]]


class LanBarezDigitsTask(LanBarezTask):
    name = "lan-barez-digits"
    description = "Lan & Barez 2024: Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in -> 5"
    vocabulary = tuple(str(i) for i in range(1, 13))


class LanBarezNumberWordsTask(LanBarezTask):
    name = "lan-barez-number-words"
    description = "Lan & Barez 2024: ... Desk done in four. Sun done in -> five"
    vocabulary = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


class LanBarezMonthsTask(LanBarezTask):
    name = "lan-barez-months"
    description = "Lan & Barez 2024: ... Desk done in April. Sun done in -> May"
    vocabulary = (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    )
