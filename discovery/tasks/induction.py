"""``induction``: continue a repeated segment of random words, ``... A B C D ... A B C`` -> `` D``.

A prompt is ``prefix`` random words, a segment of ``length`` random words, ``gap`` random words,
then the segment again without its last word (all words distinct, drawn from
:data:`discovery.reference.data.INDUCTION_WORDS`, common words that are one token in GPT-2's and
the ``induction`` reference model's vocabularies). The answer is the segment's last word, the
token that followed the earlier occurrence of the prompt's last word. The wrong answer of the
logit difference is the prefix's last word: a word the prompt contains, once, right before the
segment's first occurrence, so a model that merely copies words from the context gains nothing.

Corruption ``random`` (the default): the second occurrence is re-randomised (fresh words not in the
prompt, same length), so nothing in the context says what comes next.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.tasks.base import Example, Task
from discovery.types.errors import UsageError


class InductionTask(Task):
    name = "induction"
    description = "continue a repeated segment of random words: ... A B C D ... A B C -> D"
    corruptions = ("random",)
    default_corruption = "random"
    metric = "logit_diff"

    def __init__(self, length: int = 6, prefix: int = 4, gap: int = 4, **params: Any) -> None:
        if length < 2:
            raise UsageError(f"task 'induction': length must be at least 2, got {length}")
        if prefix < 1 or gap < 0:
            raise UsageError(f"task 'induction': prefix must be >= 1 and gap >= 0, got prefix={prefix} gap={gap}")
        super().__init__(length=length, prefix=prefix, gap=gap, **params)
        self.length, self.prefix, self.gap = length, prefix, gap

    def word_pool(self, tokenizer: Any) -> tuple[str, ...]:
        """The words that are one known token both at the prompt's start and after a space."""
        from discovery.tasks.words import INDUCTION_WORDS

        unk = getattr(tokenizer, "unk_token_id", None)

        def one_token(text: str) -> bool:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return len(ids) == 1 and ids[0] != unk

        pool = tuple(w for w in INDUCTION_WORDS if one_token(w) and one_token(" " + w))
        # the corruption needs length - 1 fresh words on top of the prompt's own
        need = self.prefix + self.length + self.gap + self.length - 1
        if len(pool) < need:
            raise UsageError(f"task 'induction': needs {need} one-token words, this tokenizer has {len(pool)}")
        return pool

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        rng = np.random.default_rng([seed, 0])
        corrupt_rng = np.random.default_rng([seed, 1])
        pool = self.word_pool(tokenizer)
        n_distinct = self.prefix + self.length + self.gap
        out = []
        for _ in range(n):
            words = [str(w) for w in rng.choice(pool, n_distinct, replace=False)]
            prefix = words[: self.prefix]
            segment = words[self.prefix : self.prefix + self.length]
            gap = words[self.prefix + self.length :]
            clean = prefix + segment + gap + segment[:-1]
            unused = [w for w in pool if w not in set(words)]
            fresh = [str(w) for w in corrupt_rng.choice(unused, self.length - 1, replace=False)]
            corrupt = prefix + segment + gap + fresh
            out.append(
                Example(
                    clean=" ".join(clean),
                    corrupt=" ".join(corrupt),
                    correct=(" " + segment[-1],),
                    wrong=(" " + prefix[-1],),
                )
            )
        return out
